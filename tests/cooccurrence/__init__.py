"""Tests moved from tests/test_cooccurrence.py. Its notes:

saelab.cooccurrence: counts, normalisation, both "Jaccards", the bisection, subgraphs, group
statistics, PCA and the feature pages, each on a hand-computed example."""
