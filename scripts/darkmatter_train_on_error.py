"""Rule darkmatter_train_on_error: TopK SAEs trained on the linear and the nonlinear error of one
SAE."""

from pathlib import Path

import numpy as np
import torch

from saelab.darkmatter.regression import load_regression
from saelab.darkmatter.train_on_error import (
    ERROR_TARGETS,
    ErrorSAEConfig,
    train_error_sae,
    training_targets,
)
from saelab.runtime import atomic_dir, configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae, save_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.train
    sae = load_sae(snakemake.input.sae)
    W_vec = torch.from_numpy(load_regression(snakemake.input.reg).W_vec)
    targets = training_targets(sae, snakemake.input.cache, W_vec, opts["n_tokens"], opts["seed"])
    d = W_vec.shape[0]
    cfg = ErrorSAEConfig.from_section(opts, d)
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
        write_json_atomic(summary, out / "training.json")
