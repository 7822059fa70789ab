"""Rule darkmatter_pursuit_breakdown: Fig 10a's series from the pursuit SAEs' pursuit.json (the
width sweep with the power-law fit of its pursuit FVU, and the k sweep)."""

import json
from pathlib import Path

from saelab.darkmatter.scaling import pursuit_breakdown
from saelab.runtime import logged, write_json_atomic

with logged(snakemake.log[0]):
    opts = snakemake.params.sweeps
    paths = dict(zip(opts["names"], snakemake.input.pursuit, strict=True))
    records = {name: json.loads(Path(path).read_text()) for name, path in paths.items()}
    width_records = [records[name] for name in opts["width_sweep"]]
    k_records = [records[name] for name in opts["k_sweep"] if name in records]
    write_json_atomic(pursuit_breakdown(width_records, k_records), snakemake.output.json)
