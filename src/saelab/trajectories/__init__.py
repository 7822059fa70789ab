"""SAE feature trajectories through attention (methods §6; the original is Endauvor/MATS_Reload).

* :mod:`~saelab.trajectories.decompose`: per-source-token decomposition of the last token's
  attention output, with the self-check against ``hook_resid_mid``;
* :mod:`~saelab.trajectories.evolution`: SAE latents at every step, logit lens, JSON;
* :mod:`~saelab.trajectories.graph`: the newcomer rule, per-length edges, backward trace;
* :mod:`~saelab.trajectories.describe`: hover descriptions (feature summaries, Neuronpedia);
* :mod:`~saelab.trajectories.settings`: the ``trajectories`` config section.
"""

from saelab.trajectories.decompose import DecompositionError
from saelab.trajectories.evolution import compute_evolution, load_evolution
from saelab.trajectories.graph import (
    Edge,
    Newcomer,
    all_length_edges,
    find_newcomers,
    length_edges,
    node_newcomers,
    trace_backwards,
)
from saelab.trajectories.settings import Prompt, TrajectoriesConfig, check_trajectories

__all__ = [
    "DecompositionError",
    "Edge",
    "Newcomer",
    "Prompt",
    "TrajectoriesConfig",
    "all_length_edges",
    "check_trajectories",
    "compute_evolution",
    "find_newcomers",
    "length_edges",
    "load_evolution",
    "node_newcomers",
    "trace_backwards",
]
