"""Tests moved from tests/test_trajectories.py. Its notes:

Tests of saelab.trajectories: the attention decomposition against the model's own hooks
(tiny random GPT-2, Gemma-2 and Gemma-3 models loaded through saelab.models), the newcomer rule,
edges and backward trace on a hand-built evolution, the figures, the HTML in headless Chromium,
the config checks, and the micro DAG end to end."""
