"""Rules plot_<id>: draw one figure of the registry (saelab.figures) from its analysis outputs.

Each input is read by its kind (JSON -> dict, JSON lines -> list of dicts, npz -> dict of arrays,
CSV -> DataFrame, a folder -> its path; a list of inputs -> a list), then the row's drawing
function is called with the inputs and ``params.options`` as keywords. It returns a matplotlib
Figure (saved as PNG), a plotly figure (an HTML page, plotly.js inline) or, for a folder, (file
name, figure) pairs, saved into the folder as it fills (HTML pages share one plotly.min.js).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from saelab.figures import figure, resolve_draw
from saelab.plots.common import save_figure, write_plotly_html
from saelab.runtime import atomic_dir, logged


def load(path):
    if isinstance(path, list):
        return [load(p) for p in path]
    path = Path(path)
    if path.is_dir():
        return str(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".npz":
        with np.load(path) as data:
            return dict(data)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: no reader for {path.suffix!r} (json, jsonl, npz, csv or a folder)")


def save(fig, path, plotlyjs=True):
    if isinstance(fig, Figure):
        save_figure(fig, path)
    else:  # a plotly figure
        write_plotly_html(fig, path, plotlyjs)


with logged(snakemake.log[0]) as log:
    row = figure(snakemake.params.figure)
    data = {name: load(value) for name, value in snakemake.input.items()}
    drawn = resolve_draw(row)(**data, **snakemake.params.options)
    if Path(row.file).suffix:
        save(drawn, snakemake.output.figure)
    else:
        with atomic_dir(snakemake.output.figure) as folder:
            for name, fig in drawn:
                save(fig, folder / name, plotlyjs="directory")
                log.info("%s", name)
