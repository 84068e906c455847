"""Analysis of measured curves: stage detection (and, later, power and statistics)."""
