"""Corpus: collect, filter, deduplicate, split, tokenize and pack multilingual code."""
