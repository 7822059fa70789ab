# Helpers of the trajectory (trajectories.smk) rules: config lookups, paths, params, targets.
from saelab.trajectories.settings import (
    TrajectoriesConfig,
    check_trajectories,
    evolution_plot_layers,
    studied_layers,
    sweep_layers,
)

TRAJ = TrajectoriesConfig.from_dict(CFG.trajectories)
TRAJ_LAYERS = []
if TRAJ.prompts:
    TRAJ = check_trajectories(CFG, MODEL.n_layers)
    TRAJ_LAYERS = studied_layers(CFG, TRAJ, MODEL.n_layers)


def trajectory_sae_names():
    """layer -> name of the layer's SAE in the sweep (trained or released)."""
    names = sweep_layers(CFG, TRAJ.sweep)
    return {layer: names[layer] for layer in TRAJ_LAYERS}


def trajectory_sae_inputs(wildcards):
    return {
        f"sae_l{layer}": sae_dir_by_name(name)
        for layer, name in trajectory_sae_names().items()
    }


def trajectory_feature_inputs(wildcards):
    """The feature summaries (rule feature_summary) of the per-layer SAEs, for the hover."""
    return {
        f"features_l{layer}": feature_summary_path(name)
        for layer, name in trajectory_sae_names().items()
    }


def trajectory_evolution_params(wildcards):
    return {
        "prompts": [vars(prompt) for prompt in TRAJ.prompts],
        "layers": TRAJ_LAYERS,
        "sae_names": trajectory_sae_names(),
        "top_k": TRAJ.top_k,
        "check_tolerance": TRAJ.check_tolerance,
        "logit_lens_top": TRAJ.logit_lens_top,
        "logit_lens_lengths": TRAJ.logit_lens_lengths,
    }


def trajectory_graph_outputs():
    """Per T: the traced graph (JSON), its PNG and its HTML, each a report item."""
    outputs = {}
    for T in TRAJ.T:
        outputs[f"graph_T{T}"] = (
            f"data/analysis/trajectories/{MODEL_ID}/{{prompt}}/graph_T{T}.json"
        )
        outputs[f"png_T{T}"] = registry_output("trajectory_graph", T=T)
        outputs[f"html_T{T}"] = registry_output("trajectory_graph_html", T=T)
    return outputs


def trajectory_graph_params(wildcards):
    return {
        "T": list(TRAJ.T),
        "description_tokens": TRAJ.description_tokens,
        "neuronpedia": TRAJ.neuronpedia,
    }


def trajectory_evolution_path(prompt):
    return f"data/analysis/trajectories/{MODEL_ID}/{prompt}/evolution.json"


def trajectory_evolution_outputs():
    """One evolution file per prompt, all from one job: loading gemma-3 costs more than the
    whole analysis of a prompt."""
    return [trajectory_evolution_path(prompt) for prompt in TRAJ.prompt_names]


def trajectory_evolution_input(wildcards):
    return trajectory_evolution_path(wildcards.prompt)
