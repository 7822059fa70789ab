"""Rule darkmatter_token_loss: per-token model loss over the window contexts of one cache."""

import numpy as np
import torch

from saelab.cache import ActivationReader, cache_manifest
from saelab.models import configured_device, load_prepared
from saelab.models.splice import token_losses
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged, savez_atomic

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.loss
    spec = opts["model"]
    device = configured_device(snakemake.config)
    cache = snakemake.input.cache
    hook = cache_manifest(cache)["hooks"][0]
    # The same split and context order as sae_info's window.
    reader = ActivationReader(cache, hook, 1, split=opts["window"]["split"], shuffle=False)
    contexts = reader.contexts(opts["max_contexts"])
    tokens = torch.from_numpy(contexts.tokens).to(device)
    precision = model_precision(spec, device, log)
    model = load_prepared(snakemake.input.model_dir, device=device, dtype=precision.dtype)
    log.info("per-token loss of %d contexts of %d tokens", *tokens.shape)
    losses = token_losses(model, tokens)
    savez_atomic(
        snakemake.output.npz,
        {
            "rows": contexts.rows,
            "loss": losses.reshape(-1),
            "precision": np.array(precision.dtype_name),
        },
    )
