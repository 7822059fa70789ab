"""Tests of ``saelab.darkmatter.per_token``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import numpy as np
import torch

from saelab.darkmatter.per_token import ErrorNorms, cross_width_predictability

torch.set_num_threads(1)


# ------------------------------------------------------------------ per-token, norms
def test_cross_width_predictability_on_planted_norms():
    rng = np.random.default_rng(5)
    base = rng.gamma(2.0, size=3000)
    nonlinear = rng.gamma(2.0, size=3000)
    # wider SAE's norm: the narrower one's, plus its nonlinear part, plus a little noise
    total = np.stack([base + nonlinear, 0.5 * base + nonlinear + 0.01 * rng.normal(size=3000)])
    norms = ErrorNorms(total, np.zeros_like(total), np.stack([nonlinear, nonlinear]))
    cross = cross_width_predictability(norms, seed=0)
    assert np.isnan(cross.r2_basic[1, 0]) and np.isnan(cross.r2_basic[0, 0])
    assert 0.3 < cross.r2_basic[0, 1] < 0.99
    assert cross.r2_with_nonlinear[0, 1] > 0.999 and cross.extra_percent[0, 1] > 99
