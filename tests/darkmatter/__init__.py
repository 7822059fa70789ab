"""Tests moved from tests/test_darkmatter.py. Its notes:

The dark matter of SAEs (core): info, regressions, scaling law, per-token, norms, noise.

Tests moved from tests/test_darkmatter_interventions.py. Its notes:

Dark-matter interventions (methods §5.5-5.8): gradient pursuit, downstream CE, predicting the
error from other components, training on the error and detection scoring, each on a small
problem whose answer is known; plus the end-to-end outputs of the micro DAG."""
