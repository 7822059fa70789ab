"""Rules darkmatter_train_on_error (TopK SAEs trained on the linear and the nonlinear error of
one SAE) and darkmatter_score_error_saes (their latents scored by detection, named scorer)."""

import json
from pathlib import Path

import numpy as np
import torch

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.pursuit import write_json
from saelab.darkmatter.regression import load_regression
from saelab.darkmatter.scoring import choose_latents, detection_examples, make_scorer, score_latents
from saelab.darkmatter.train_on_error import (
    ERROR_TARGETS,
    ErrorSAEConfig,
    dense_activations,
    error_parts,
    train_error_sae,
    training_targets,
)
from saelab.runtime import atomic_dir, logged, set_torch_threads
from saelab.saes.io import load_sae, save_sae


def train(log):
    opts = snakemake.params.train
    sae = load_sae(snakemake.input.sae)
    W_vec = torch.from_numpy(load_regression(snakemake.input.reg).W_vec)
    targets = training_targets(sae, snakemake.input.cache, W_vec, opts["n_tokens"], opts["seed"])
    d = W_vec.shape[0]
    cfg = ErrorSAEConfig(
        width=opts["width"] or 4 * d, k=opts["k"], n_tokens=opts["n_tokens"],
        batch_size=opts["batch_size"], lr=opts["lr"], seed=opts["seed"],
    )  # fmt: skip
    summary = {"sae": Path(snakemake.input.sae).name, "config": cfg._asdict(), "targets": {}}
    with atomic_dir(snakemake.output.saes) as out:
        for name in ERROR_TARGETS:
            log.info("training a TopK SAE (width %d, k %d) on the %s error of %d tokens",
                     cfg.width, cfg.k, name, len(targets[name]))  # fmt: skip
            error_sae, fvus = train_error_sae(targets[name], cfg, hook_name=sae.cfg.hook_name)
            save_sae(error_sae, out / name)
            tail = fvus[-max(1, len(fvus) // 10) :]
            summary["targets"][name] = {"final_fvu": float(np.mean(tail)), "fvu_curve": fvus}
            log.info("%s: final training FVU %.4f", name, summary["targets"][name]["final_fvu"])
        (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def score(log):
    from saelab.cache import open_cache
    from saelab.models import load_tokenizer

    opts = snakemake.params.scoring
    info = load_sae_info(snakemake.input.info)
    group = open_cache(snakemake.input.cache)
    ctx = int(info.attrs["context_len"])
    context_tokens = int(opts["llm"]["context_tokens"])

    def render(index: int) -> str:
        row = int(info.rows[index])
        start = max(row - context_tokens, (row // ctx) * ctx)
        ids = np.asarray(group["tokens"][start : row + 1], dtype=np.int64).tolist()
        return tokenizer.decode(ids[:-1]) + "<<" + tokenizer.decode(ids[-1:]) + ">>"

    tokenizer = load_tokenizer(snakemake.input.model_dir) if opts["scorer"] == "llm" else None
    # Build the scorer first: an unreachable endpoint fails before any work.
    scorer = make_scorer(
        opts["scorer"], info.token_ids, render=render,
        explanation_tokens=opts["explanation_tokens"], **opts["llm"],
    )  # fmt: skip
    W_vec = torch.from_numpy(load_regression(snakemake.input.reg).W_vec)
    parts = error_parts(torch.from_numpy(info.x), torch.from_numpy(info.x_hat), W_vec)
    contexts = np.asarray(info.rows) // ctx
    order = list(dict.fromkeys(contexts.tolist()))
    explain_mask = np.isin(contexts, order[: len(order) // 2])
    result = {"scorer": opts["scorer"], "sae": Path(snakemake.input.info).parent.name,
              "n_tokens": len(info.x), "targets": {}}  # fmt: skip
    for name in ERROR_TARGETS:
        error_sae = load_sae(Path(snakemake.input.saes) / name)
        acts = dense_activations(error_sae, parts[name])
        latents = choose_latents(
            acts, explain_mask, opts["n_latents"], opts["min_activations"], opts["seed"]
        )
        rng = np.random.default_rng(opts["seed"])
        examples = [
            detection_examples(
                acts,
                int(latent),
                explain_mask,
                rng,
                opts["n_quantiles"],
                opts["examples_per_quantile"],
                opts["n_negatives"],
            )
            for latent in latents
        ]
        result["targets"][name] = score_latents(scorer, examples, opts["n_quantiles"])
        scored = result["targets"][name]
        accuracy = zip(scored["bins"], scored["accuracy"], strict=True)
        log.info("%s: %d latents scored; accuracy %s", name, len(latents),
                 ", ".join(f"{b} {a:.2f}" for b, a in accuracy))  # fmt: skip
    write_json(result, snakemake.output.scores)


with logged(snakemake.log[0]) as log:
    set_torch_threads(snakemake.threads)
    if snakemake.rule == "darkmatter_train_on_error":
        train(log)
    else:
        score(log)
