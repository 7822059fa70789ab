"""Tests moved from tests/test_pretrained.py. Its notes:

Released (pretrained) SAE-Lens SAEs: sae_lens's own loaders, saelab's format, the config.

Every comparison is against sae_lens itself: its ``load_from_disk``, its ``from_pretrained``
loaders, its ``encode``/``decode`` and its ``evals.get_recons_loss``. Local releases are built
with sae_lens's own ``save_model`` (random weights, small sizes) in a store laid out as
``hf download`` writes a release.


Tests moved from tests/test_saes.py. Its notes:

Tests of saelab.saes: every architecture's invariants on hand-built or brute-force-checked
examples, the sparse decoder and encoder gradients, decoder upkeep, the aux loss and dead
counter, bias conventions, transcoders, and the SAE-Lens round trip in both directions.

Hand-built SAEs use identity-like weights so that every code and loss can be written down; the
random cases compare against a dense brute-force implementation. sae_lens is imported only by
the tests that need it (it takes a few seconds).
"""
