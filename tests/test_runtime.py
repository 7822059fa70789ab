"""saelab.runtime: atomic writers, JSON conversion and the atomic output folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from saelab.runtime import atomic_dir, load_npz, savez_atomic, to_jsonable, write_json_atomic


class Point(NamedTuple):
    x: float
    tag: str


def test_to_jsonable_gives_plain_strict_json_types():
    value = {
        1: np.float32(0.5),
        "array": np.arange(3, dtype=np.int64),
        "tensor": torch.tensor([[1.5, float("nan")]]),
        "point": Point(float("inf"), "a"),
        "path": Path("a/b"),
        "flags": (np.bool_(True), False),
    }
    plain = to_jsonable(value)
    assert plain == {
        "1": 0.5,
        "array": [0, 1, 2],
        "tensor": [[1.5, None]],
        "point": {"x": None, "tag": "a"},
        "path": "a/b",
        "flags": [True, False],
    }
    json.dumps(plain, allow_nan=False)  # strict: no NaN or inf survives


def test_write_json_atomic_round_trips_and_leaves_no_temp_file(tmp_path):
    path = write_json_atomic({"r2": [0.25, math.nan]}, tmp_path / "sub" / "out.json")
    assert json.loads(path.read_text()) == {"r2": [0.25, None]}
    compact = write_json_atomic({"a": [1, 2]}, tmp_path / "c.json", indent=None)
    assert compact.read_text() == '{"a":[1,2]}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.json", "out.json", "sub"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = write_json_atomic({"ok": 1}, tmp_path / "out.json")
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}
    savez_atomic(tmp_path / "a.npz", {"x": np.arange(4)})
    with np.load(tmp_path / "a.npz") as data:
        assert data["x"].tolist() == [0, 1, 2, 3]


def test_atomic_dir_publishes_only_complete_folders(tmp_path):
    with atomic_dir(tmp_path / "done") as out:
        (out / "f.txt").write_text("x")
    assert (tmp_path / "done" / "f.txt").read_text() == "x"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "killed") as out:
        (out / "f.txt").write_text("half")
        raise RuntimeError("killed mid-way")
    assert not (tmp_path / "killed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["done"]


def test_load_npz_names_what_is_missing_and_which_rule_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no feature summary at .*rule `feature_summary`"):
        load_npz(tmp_path / "none.npz", ("a",), "feature summary", "feature_summary")
    savez_atomic(tmp_path / "x.npz", {"a": np.arange(3)})
    assert load_npz(tmp_path / "x.npz", ("a",), "x", "r")["a"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"is not a co-occurrence counts file: it lacks \['b'\]"):
        load_npz(tmp_path / "x.npz", ("a", "b"), "co-occurrence counts", "cooccurrence")


def test_savez_atomic_gives_equal_bytes_for_equal_arrays_at_any_time(tmp_path, monkeypatch):
    import time

    arrays = {"x": np.arange(6.0).reshape(2, 3), "names": np.array(["a", "bc"]), "s": 3}
    first = savez_atomic(tmp_path / "a.npz", arrays).read_bytes()
    later = time.time() + 3 * 86400  # what numpy would stamp into every member three days later
    monkeypatch.setattr(time, "time", lambda: later)
    second = savez_atomic(tmp_path / "b.npz", arrays).read_bytes()
    assert first == second
    # the same archive numpy writes, apart from the timestamps: np.load reads it the same way
    np.savez_compressed(tmp_path / "ref.npz", **arrays)
    with np.load(tmp_path / "a.npz") as ours, np.load(tmp_path / "ref.npz") as ref:
        assert sorted(ours.files) == sorted(ref.files)
        for key in ref.files:
            assert ours[key].dtype == ref[key].dtype
            np.testing.assert_array_equal(ours[key], ref[key])


def test_reuse_freed_memory_stops_large_tensors_page_faulting_again():
    """After configure_torch, a loop that makes and frees the same large tensors (as an SAE step
    or a logits block does) stops page-faulting them in: with glibc's default every iteration
    faults ~20k pages of 4 KiB. Run in child processes: the setting is process-wide."""
    import subprocess
    import sys

    code = """
import resource, sys, torch
from saelab.runtime import configure_torch

print(configure_torch(1, reuse_memory=sys.argv[1] == "reuse"))
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(16 * 2**20), torch.ones(4 * 2**20)  # 64 and 16 MiB, made and freed
    del x, y
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {}
    for mode in ("default", "reuse"):
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[0] == str(mode == "reuse")
        faults[mode] = [int(n) for n in out[1:]]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # 2 MiB pages fault 512x less
        assert min(faults["default"][-4:]) > 16_384  # every iteration faults its pages in
    # the first iterations grow the heap; then the freed blocks are reused
    assert sum(faults["reuse"][-4:]) < 0.25 * min(faults["default"][-4:])
