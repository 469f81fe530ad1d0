"""The benchmark suite runs end to end (``python -m benchmarks --quick``) and prints its table.

Speed is not asserted (a timed test on a shared CI machine proves nothing): the structure is. Every case
produces its rows with a measured value (the scaling grid is skipped without a GPU, and says so), every row
with a target says whether it is met, the printed table is the JSON's table, and the machine is named.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

EXPECTED_CASES = {"datagen", "memory", "pipeline", "dr3", "robomimic", "rollouts"}
TARGET_ROWS = {  # (case, start of the measure) of every row that carries a target
    ("pipeline", "pipeline efficiency"),
    ("robomimic", "ours / robomimic matched"),
    ("dr3", "time per step, DR3 on (encoder) / off"),
    ("dr3", "time per step, DR3 on (penultimate) / off"),
    ("memory", "resident bytes per transition"),
    ("rollouts", "per worker"),
    ("rollouts", "worker scaling"),
}


@pytest.mark.slow
def test_quick_suite_runs_every_case_and_prints_one_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["failed_cases"] == []
    m = res["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["device"] == "cpu" and m["gpu"] is None
    assert res["settings"]["quick"] is True

    rows = res["rows"]
    cases = {r["case"] for r in rows}
    assert EXPECTED_CASES <= cases
    scaling = [r for r in rows if r["case"] == "scaling"]
    assert len(scaling) == 1 and scaling[0]["value"] is None and "no GPU" in scaling[0]["note"]
    for r in rows:
        if r["case"] == "scaling":
            continue
        assert r["value"] is not None and r["value"] > 0, r
        if r["reps"] > 1:
            assert r["spread"] is not None and r["spread"] >= 0
    with_target = {(r["case"], r["measure"]) for r in rows if r["target"]}
    for case, start in TARGET_ROWS:
        hits = [mm for c, mm in with_target if c == case and mm.startswith(start)]
        assert len(hits) == 1, (case, start, with_target)
    for r in rows:
        if r["target"]:
            assert isinstance(r["met"], bool)
            op, bound = r["target"].split()
            assert r["met"] == (r["value"] >= float(bound) if op == ">=" else r["value"] <= float(bound))

    # the printed table is the JSON's table: a header, a rule and one line per row
    table = res["table"].splitlines()
    assert table[0] == "| case | measure | value | spread | target | met | note |"
    assert len(table) == 2 + len(rows)
    assert res["table"] in proc.stdout
    assert "targets met:" in proc.stdout


def test_bad_device_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--device", "tpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --device tpu: expected cpu or cuda"
