"""The dark matter of SAEs (Engels et al., arXiv 2410.14670; methods.md §5).

One small module per concern:

* :mod:`.info`: per-SAE arrays over the analysis window (x, x̂, error, norms, L0, active
  latents); replaces the original's ``SAEInfoObject``.
* :mod:`.regression`: no-intercept least squares of x → error and x → ‖error‖², held-out R².
* :mod:`.scaling`: FVU against width, the power-law fit, the dark-matter breakdown, contours.
* :mod:`.per_token`: per-token error norms across widths and their cross-width predictability.
* :mod:`.norms`: norm prediction (Fig 7), baselines (Fig 13), latents against the norm probe
  (Fig 14).
* :mod:`.noise`: the synthetic noise simulation (Fig 15, Table 1).

Sign convention: ``error = x − x̂`` everywhere (the original stored x̂ − x and flipped it).
"""
