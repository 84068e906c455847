"""Analysis of measured curves: the stage test (stages, stage_test), its power (power),
and the statistics of comparisons (statistics). Computing only; report/ draws."""
