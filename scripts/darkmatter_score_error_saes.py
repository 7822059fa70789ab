"""Rule darkmatter_score_error_saes: the error SAEs' latents scored by detection (named scorer)."""

from pathlib import Path

import numpy as np
import torch

from saelab.cache import open_cache
from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.regression import ErrorParts, load_regression
from saelab.darkmatter.scoring import explanation_mask, make_scorer, score_activations
from saelab.darkmatter.train_on_error import ERROR_TARGETS, dense_activations
from saelab.models import load_tokenizer
from saelab.runtime import configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.scoring
    info = load_sae_info(snakemake.input.info)
    group = open_cache(snakemake.input.cache)
    ctx = int(info.attrs["context_len"])
    context_tokens = int(opts["llm"]["context_tokens"])
    tokenizer = load_tokenizer(snakemake.input.model_dir) if opts["scorer"] == "llm" else None

    def render(index: int) -> str:
        """The example's context up to it, the token itself marked <<like this>>."""
        row = int(info.rows[index])
        start = max(row - context_tokens, row - int(info.position[index]))  # its context's start
        ids = np.asarray(group["tokens"][start : row + 1], dtype=np.int64).tolist()
        return tokenizer.decode(ids[:-1]) + "<<" + tokenizer.decode(ids[-1:]) + ">>"

    # Build the scorer first: an unreachable endpoint fails before any work.
    scorer = make_scorer(
        opts["scorer"], info.token_ids, render=render,
        explanation_tokens=opts["explanation_tokens"], **opts["llm"],
    )  # fmt: skip
    W_vec = torch.from_numpy(load_regression(snakemake.input.reg).W_vec)
    parts = ErrorParts.of(torch.from_numpy(info.x), torch.from_numpy(info.x_hat), W_vec)
    explain = explanation_mask(info.rows, ctx)
    result = {"scorer": opts["scorer"], "sae": Path(snakemake.input.info).parent.name,
              "n_tokens": len(info.x), "targets": {}}  # fmt: skip
    for name in ERROR_TARGETS:
        error_sae = load_sae(Path(snakemake.input.saes) / name)
        scored = score_activations(
            scorer, dense_activations(error_sae, getattr(parts, name)), explain,
            n_latents=opts["n_latents"], min_activations=opts["min_activations"],
            n_quantiles=opts["n_quantiles"], examples_per_quantile=opts["examples_per_quantile"],
            n_negatives=opts["n_negatives"], seed=opts["seed"],
        )  # fmt: skip
        result["targets"][name] = scored
        accuracy = zip(scored["bins"], scored["accuracy"], strict=True)
        log.info("%s: %d latents scored; accuracy %s", name, scored["n_latents"],
                 ", ".join(f"{b} {a:.2f}" for b, a in accuracy))  # fmt: skip
    write_json_atomic(result, snakemake.output.scores)
