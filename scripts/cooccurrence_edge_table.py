"""Rule cooccurrence_edge_table: the original's edge_thresholds.csv from every subgraph job."""

import json
from pathlib import Path

import pandas as pd

from saelab.runtime import logged, write_text_atomic

with logged(snakemake.log[0]):
    rows = []
    for path in snakemake.input:
        edge = json.loads(Path(path).read_text())
        rows.append({key: value for key, value in edge.items() if key not in ("trace", "bounds")})
    write_text_atomic(pd.DataFrame(rows).to_csv(index=False), snakemake.output.table)
