"""Rule cooccurrence_edge_table: the original's edge_thresholds.csv from every subgraph job."""

import json
import os
from pathlib import Path

import pandas as pd

from saelab.runtime import logged

with logged(snakemake.log[0]):
    rows = []
    for path in snakemake.input:
        edge = json.loads(Path(path).read_text())
        rows.append({key: value for key, value in edge.items() if key not in ("trace", "bounds")})
    out = Path(snakemake.output.table)
    tmp = out.with_name(out.name + ".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, out)
