"""Tests moved from tests/test_plots.py. Its notes:

Shared figure helpers (saelab.plots.common) and the SAE-stage figures (saelab.plots.saes):
readable log axes and token counts, fonts for any script, stable bytes, the frontier with the
dark-matter grid, CE bars grouped by splice hook."""
