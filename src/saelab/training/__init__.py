"""SAE training: the one loop (:mod:`~saelab.training.loop`), the trainer's config
(:mod:`~saelab.training.config`), its SAE group (:mod:`~saelab.training.group`), checkpoints and
resume (:mod:`~saelab.training.checkpoint`) and outputs (:mod:`~saelab.training.outputs`). The
cache- or stream-backed trainer itself is :func:`saelab.train.train_saes`."""
