"""Tests moved from tests/test_toy.py. Its notes:

The toy feature hierarchy: generator invariants, the absorption metric on hand-built SAEs with
known behaviour, the flat-vs-Matryoshka result over seeds, the figure and the Snakemake script."""
