"""The figure registry: one row per figure (or report item) of the pipeline.

Each row names the file, the analysis outputs it reads, the function that draws it and its
caption. The workflow reads this table only (``workflow/rules/plots.smk`` generates one rule
``plot_<id>`` per drawn row, all running ``scripts/plot.py``; ``rule all`` and the report come
from the same rows), and the README's figure map is :func:`figure_map` (a test compares them).
Grepping a file name lands on its row.

Plain data: no Snakemake and no matplotlib import here. Names in a row refer to
- ``inputs`` / ``params`` / ``targets``: functions of ``workflow/rules/common.smk``
  (``inputs(wildcards)`` -> named input paths, ``params(wildcards)`` -> the drawing options,
  ``targets()`` -> one dict of wildcard values per file that the config asks for);
- ``draw``: ``"module:function"``, called as ``function(**inputs, **options)``; it returns a
  matplotlib Figure (a ``.png`` file), a plotly figure (a ``.html`` file) or, for a folder, an
  iterable of (file name, figure) pairs;
- ``rule``: for files an analysis rule writes itself (tables, HTML pages, folders), that rule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FigureRow:
    id: str
    """Unique; a drawn row's rule is ``plot_<id>``."""
    file: str
    """Path under the working directory; ``{wildcards}`` are filled from ``targets()``."""
    caption: str | None
    """Caption file under ``workflow/report/`` (None: a target, not a report item)."""
    category: str
    """Report category (one per analysis)."""
    targets: str
    """common.smk function: the wildcard values of every file the config asks for."""
    inputs: str | None = None
    """common.smk function: the analysis outputs a drawn row reads (name -> path or paths)."""
    draw: str | None = None
    """``module:function`` that draws the figure from its inputs and options."""
    params: str | None = None
    """common.smk function: options of the drawing function (None: no options)."""
    rule: str | None = None
    """For a row no plot rule draws: the analysis rule that writes the file."""
    subcategory: str | None = None
    paper: str | None = None
    """The paper's figure or table this reproduces (dark matter), for the README map."""
    patterns: tuple[str, ...] | None = None
    """For a folder (``file`` without a suffix): the report's file patterns inside it."""

    @property
    def rule_name(self) -> str:
        return self.rule or f"plot_{self.id}"


def _row(id, file, caption, category, targets, **kw) -> FigureRow:
    return FigureRow(id, file, caption, category, targets, **kw)


_DM = "plots/darkmatter"
_DMD = "saelab.plots.darkmatter"
_DMT = "saelab.plots.darkmatter_tokens"
_DMI = "saelab.plots.darkmatter_interventions"
_CO = "saelab.plots.cooccurrence"

FIGURES: tuple[FigureRow, ...] = (
    # ---------------------------------------------------------------- SAEs
    _row("training_curves", "plots/saes/training_curves.png", "training_curves.rst", "SAEs",
         "training_curve_targets", inputs="training_curve_input",
         draw="saelab.plots.saes:draw_training_curves"),
    _row("l0_fvu_frontier", "plots/saes/l0_fvu_frontier.png", "l0_fvu_frontier.rst", "SAEs",
         "sae_figure_targets", inputs="frontier_inputs", params="frontier_params",
         draw="saelab.plots.saes:draw_l0_fvu_frontier"),
    _row("matryoshka_prefix_fvu", "plots/saes/matryoshka_prefix_fvu.png",
         "matryoshka_prefix_fvu.rst", "SAEs", "sae_figure_targets",
         inputs="sae_evaluations_input", params="fvu_params",
         draw="saelab.plots.saes:draw_matryoshka_prefix_fvu"),
    _row("ce_recovered", "plots/saes/ce_recovered.png", "ce_recovered.rst", "SAEs",
         "sae_figure_targets", inputs="sae_evaluations_input",
         draw="saelab.plots.saes:draw_ce_recovered"),
    _row("toy_absorption", "plots/saes/toy_absorption.png", "toy_absorption.rst", "SAEs",
         "sae_figure_targets", inputs="toy_absorption_input",
         draw="saelab.plots.toy:plot_toy_absorption"),
    # ---------------------------------------------------------------- co-occurrence
    _row("subgraph_sizes", "plots/cooccurrence/subgraph_sizes_tau{tau}.png",
         "cooccurrence_subgraph_sizes.rst", "Co-occurrence", "cooccurrence_tau_targets",
         inputs="cooccurrence_plot_inputs", params="cooccurrence_plot_params",
         draw=f"{_CO}:draw_subgraph_sizes"),
    _row("group_subgraph_sizes", "plots/cooccurrence/group_subgraph_sizes_tau{tau}.png",
         "cooccurrence_group_subgraph_sizes.rst", "Co-occurrence", "cooccurrence_tau_targets",
         inputs="cooccurrence_plot_inputs", params="cooccurrence_plot_params",
         draw=f"{_CO}:draw_group_subgraph_sizes"),
    _row("group_subgraph_counts", "plots/cooccurrence/group_subgraph_counts_tau{tau}.png",
         "cooccurrence_group_subgraph_counts.rst", "Co-occurrence", "cooccurrence_tau_targets",
         inputs="cooccurrence_plot_inputs", params="cooccurrence_plot_params",
         draw=f"{_CO}:draw_group_subgraph_counts"),
    _row("cooccurrence_by_index", "plots/cooccurrence/cooccurrence_by_index_tau{tau}.png",
         "cooccurrence_by_index.rst", "Co-occurrence", "cooccurrence_tau_targets",
         inputs="cooccurrence_by_index_inputs", params="cooccurrence_plot_params",
         draw=f"{_CO}:draw_cooccurrence_by_index"),
    _row("pca_subgraph", "plots/cooccurrence/pca_subgraph_tau{tau}.png", "cooccurrence_pca.rst",
         "Co-occurrence", "representative_targets", inputs="pca_subgraph_input",
         params="pca_plot_params", draw=f"{_CO}:draw_pca_subgraph"),
    _row("pca_subgraph_html", "plots/cooccurrence/pca_subgraph_tau{tau}.html",
         "cooccurrence_pca_html.rst", "Co-occurrence", "representative_targets",
         inputs="pca_subgraph_input", params="pca_plot_params",
         draw=f"{_CO}:draw_pca_subgraph_html"),
    # a folder: the drawing function gives (file name, figure) pairs, PNG and HTML per subgraph
    _row("pca_all", "plots/cooccurrence/pca_all_tau{tau}", "cooccurrence_pca_all.rst",
         "Co-occurrence", "pca_all_targets", inputs="pca_all_input", params="pca_plot_params",
         draw=f"{_CO}:draw_pca_all", patterns=("pca_subgraph_{subgraph}.png",)),
    # HTML documents (pages of text per latent), not figures: the analysis writes them
    _row("dashboard_pages", "plots/cooccurrence/dashboards", None, "Co-occurrence",
         "dashboard_targets", rule="feature_dashboards"),
    _row("dashboards", "plots/cooccurrence/dashboards.html", "feature_dashboards.rst",
         "Co-occurrence", "dashboard_targets", rule="feature_dashboards"),
    # ---------------------------------------------------------------- dark matter
    _row("darkmatter_fig01", f"{_DM}/fig01_scaling_breakdown.png", "darkmatter_fig01.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_scaling_series_input",
         draw=f"{_DMD}:plot_scaling_breakdown", paper="Fig 1"),
    _row("darkmatter_fig02", f"{_DM}/fig02_power_law_fit.png", "darkmatter_fig02.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_scaling_series_input",
         draw=f"{_DMD}:plot_power_law_fit", paper="Fig 2"),
    _row("darkmatter_fig03", f"{_DM}/fig03_error_r2_contours.png", "darkmatter_fig03.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_scaling_series_input",
         draw=f"{_DMD}:plot_error_r2_contours", paper="Fig 3"),
    _row("darkmatter_fig04", f"{_DM}/fig04_per_token_error_norms.png", "darkmatter_fig04.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_per_token_input",
         params="darkmatter_trace_params", draw=f"{_DMT}:plot_token_trace", paper="Fig 4"),
    _row("darkmatter_fig05", f"{_DM}/fig05_per_token_predictability.png", "darkmatter_fig05.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_per_token_input",
         draw=f"{_DMT}:plot_cross_width", paper="Fig 5"),
    _row("darkmatter_fig06", f"{_DM}/fig06_per_token_linear_nonlinear.png",
         "darkmatter_fig06.rst", "Dark matter", "darkmatter_figure_targets",
         inputs="darkmatter_per_token_input", params="darkmatter_trace_params",
         draw=f"{_DMT}:plot_linear_nonlinear_trace", paper="Fig 6"),
    _row("darkmatter_fig07", f"{_DM}/fig07_norm_prediction_violin.png", "darkmatter_fig07.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_norms_input",
         draw=f"{_DMD}:plot_norm_violin", paper="Fig 7"),
    _row("darkmatter_fig08", f"{_DM}/fig08_train_on_error.png", "darkmatter_fig08.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="dmi_detection_input",
         draw=f"{_DMI}:plot_train_on_error", paper="Fig 8"),
    _row("darkmatter_fig09", f"{_DM}/fig09_downstream_ce.png", "darkmatter_fig09.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="dmi_downstream_ce_input",
         draw=f"{_DMI}:plot_downstream_ce", paper="Fig 9"),
    _row("darkmatter_fig10a", f"{_DM}/fig10a_pursuit_breakdown.png", "darkmatter_fig10a.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="dmi_pursuit_breakdown_input",
         draw=f"{_DMI}:plot_pursuit_breakdown", paper="Fig 10a"),
    _row("darkmatter_fig10b", f"{_DM}/fig10b_components.png", "darkmatter_fig10b.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="dmi_components_table_input",
         draw=f"{_DMI}:plot_components", paper="Fig 10b"),
    _row("darkmatter_fig11", f"{_DM}/fig11_nonlinear_fvu_contour.png", "darkmatter_fig11.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_scaling_series_input",
         draw=f"{_DMD}:plot_nonlinear_fvu_contour", paper="Fig 11"),
    _row("darkmatter_fig12", f"{_DM}/fig12_nonlinear_norm_extra_variance.png",
         "darkmatter_fig12.rst", "Dark matter", "darkmatter_figure_targets",
         inputs="darkmatter_per_token_input", draw=f"{_DMT}:plot_nonlinear_extra",
         paper="Fig 12"),
    _row("darkmatter_fig13", f"{_DM}/fig13_norm_prediction_baselines.png",
         "darkmatter_fig13.rst", "Dark matter", "darkmatter_figure_targets",
         inputs="darkmatter_baselines_json_input", draw=f"{_DMD}:plot_baselines",
         paper="Fig 13"),
    _row("darkmatter_fig14", f"{_DM}/fig14_latents_vs_norm_probe.png", "darkmatter_fig14.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_probe_npz_input",
         draw=f"{_DMD}:plot_probe", paper="Fig 14"),
    _row("darkmatter_fig15", f"{_DM}/fig15_noise_simulation.png", "darkmatter_fig15.rst",
         "Dark matter", "darkmatter_figure_targets", inputs="darkmatter_noise_json_input",
         draw=f"{_DMD}:plot_noise", paper="Fig 15"),
    _row("darkmatter_table01", f"{_DM}/table01_noise_correlations.csv", "darkmatter_table01.rst",
         "Dark matter", "darkmatter_figure_targets", rule="darkmatter_noise", paper="Table 1"),
    # ---------------------------------------------------------------- trajectories
    _row("trajectory_graph", "plots/trajectories/{prompt}/graph_T{T}.png",
         "trajectory_graph.rst", "Trajectories", "trajectory_graph_targets",
         inputs="trajectory_graph_plot_input", draw="saelab.plots.trajectories:draw_graph",
         subcategory="{prompt}"),
    # an HTML document: its hover describes each latent (feature summaries and the tokenizer),
    # so the analysis rule writes it beside the graph JSON the PNG is drawn from
    _row("trajectory_graph_html", "plots/trajectories/{prompt}/graph_T{T}.html",
         "trajectory_graph_html.rst", "Trajectories", "trajectory_graph_targets",
         rule="trajectory_graph", subcategory="{prompt}"),
    _row("trajectory_evolution", "plots/trajectories/{prompt}/evolution_L{layer}.png",
         "trajectory_evolution.rst", "Trajectories", "trajectory_evolution_targets",
         inputs="trajectory_evolution_plot_input", params="trajectory_evolution_plot_params",
         draw="saelab.plots.trajectories:draw_evolution", subcategory="{prompt}"),
)  # fmt: skip

BY_ID: dict[str, FigureRow] = {row.id: row for row in FIGURES}
if len(BY_ID) != len(FIGURES):
    raise RuntimeError("figure ids must be unique")


def figure(figure_id: str) -> FigureRow:
    """The row of ``figure_id``; an unknown id fails with the ids there are."""
    if figure_id not in BY_ID:
        raise KeyError(f"unknown figure {figure_id!r}; the registry has {sorted(BY_ID)}")
    return BY_ID[figure_id]


def drawn() -> list[FigureRow]:
    """Rows a plot rule draws (``plot_<id>`` running scripts/plot.py)."""
    return [row for row in FIGURES if row.draw]


def written_by(rule: str) -> list[FigureRow]:
    """Rows an analysis rule writes itself."""
    return [row for row in FIGURES if row.rule == rule]


def resolve_draw(row: FigureRow):
    """The drawing function of a drawn row (imports its plots module)."""
    import importlib

    module, _, name = (row.draw or "").partition(":")
    if not module or not name:
        raise ValueError(f"figure {row.id!r} has no drawing function 'module:function'")
    return getattr(importlib.import_module(module), name)


def figure_map() -> str:
    """The README's figure map (markdown table): every row, its file and who makes it."""
    lines = ["| file | figure id | made by | caption |", "|---|---|---|---|"]
    for row in FIGURES:
        maker = f"`{row.rule_name}` (`{row.draw}`)" if row.draw else f"`{row.rule_name}`"
        caption = f"`{row.caption}`" if row.caption else "(not in the report)"
        lines.append(f"| `{row.file}` | {row.id} | {maker} | {caption} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(figure_map(), end="")
