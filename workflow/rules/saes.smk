# SAEs and transcoders: every group of runs trains from one pass over its cache (one rule per
# group, generated from the config), then each SAE is evaluated and the figures drawn.

for _group, _runs in CFG.sae_groups().items():

    rule:
        name:
            train_rule_name(_group)
        input:
            **train_inputs(_runs),
        output:
            **{run.name: directory(sae_dir(run)) for run in _runs},
        log:
            f"logs/train_saes/{_group}.log",
        benchmark:
            f"logs/benchmarks/train_saes/{_group}.tsv"
        conda:
            "../../envs/saelab.yaml"
        threads: 4
        resources:
            mem_mb=train_mem_mb(_runs),
            runtime=240,
            gpu=gpu_request,
        params:
            **group_train_params(_runs),
            group=_group,
            model=model_params,
            cache=vars(CFG.caches[_runs[0].cache]),
            tracking=dict(CFG.tracking),
        script:
            "../../scripts/train_saes.py"


rule pretrained_sae:
    """A released SAE (SAE-Lens release and id) written where a trained SAE would be, in the
    same format, by SAE-Lens's own loader from the local store (downloading into it when the
    hub is reachable; retried, as downloads fail transiently)."""
    output:
        sae=directory("results/{model}/{hook}/{sae}"),
    log:
        "logs/pretrained_sae/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/pretrained_sae/{model}/{hook}/{sae}.tsv"
    wildcard_constraints:
        sae=one_of(CFG.pretrained_saes) if CFG.pretrained_saes else "(?!)",
    retries: 2
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=pretrained_mem_mb,
        runtime=60,
    params:
        release=pretrained_params,
        store=CFG.pretrained_dir,
    script:
        "../../scripts/pretrained_sae.py"


rule ce_recovered:
    """CE loss recovered and KL (zero and mean ablation) of every named SAE of a cache, sharing
    the model load, the clean pass and the ablation passes."""
    input:
        saes=ce_sae_inputs,
        cache=cache_path("{cache}"),
        model_dir=model_dir_path(),
    output:
        scores="data/analysis/evaluation/{model}/ce_recovered/{cache}.json",
    log:
        "logs/ce_recovered/{model}/{cache}.log",
    benchmark:
        "logs/benchmarks/ce_recovered/{model}/{cache}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request,
    params:
        saes=ce_sae_names,
        eval=eval_params,
        model=model_params,
    script:
        "../../scripts/ce_recovered.py"


rule evaluate_sae:
    """FVU (three definitions), L0, dead latents, prefix FVU, seed-001 metrics, absorption, and
    the SAE's CE recovered and KL from its cache's ce_recovered job."""
    input:
        unpack(absorption_probe_input),
        sae=sae_input,
        cache=sae_cache_input,
        ce=sae_ce_scores_input,
    output:
        metrics="data/analysis/evaluation/{model}/{hook}/{sae}.json",
    log:
        "logs/evaluate_sae/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/evaluate_sae/{model}/{hook}/{sae}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request,
    params:
        eval=eval_params,
        model=model_params,
        group=sae_group_param,
        tracking=dict(CFG.tracking),
    script:
        "../../scripts/evaluate_sae.py"


rule first_letter_probe:
    """The first-letter probe of one hook's single-word tokens (the part of the absorption
    metric that needs no SAE), shared by every SAE of the hook."""
    input:
        cache=lambda wildcards: cache_path(wildcards.cache),
        model_dir=model_dir_path(),
    output:
        probe="data/analysis/absorption/{model}/{cache}/{hook}/probe.npz",
    log:
        "logs/first_letter_probe/{model}/{cache}/{hook}.log",
    benchmark:
        "logs/benchmarks/first_letter_probe/{model}/{cache}/{hook}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        split=CFG.evaluation["absorption_split"],
    script:
        "../../scripts/first_letter_probe.py"


rule toy_absorption:
    """The Matryoshka paper's toy: absorption of a parent feature by flat vs Matryoshka SAEs
    (the table, and the runs and pairs rule plot_toy_absorption draws)."""
    output:
        table="data/analysis/toy/absorption.csv",
        results="data/analysis/toy/absorption.json",
    log:
        "logs/toy_absorption/toy.log",
    benchmark:
        "logs/benchmarks/toy_absorption/toy.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        toy=dict(CFG.toy),
    script:
        "../../scripts/toy_absorption.py"
