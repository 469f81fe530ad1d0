"""The benchmark suite runs end to end (``python -m benchmarks --quick``) and prints its table.

Speed is not asserted (a timed test on a shared CI machine proves nothing): the structure is. Every case
produces its rows with a measured value (the scaling grid is skipped without a GPU, and says so), every row
with a target says whether it is met, the printed table is the JSON's table, and the machine is named.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

EXPECTED_CASES = {"datagen", "memory", "pipeline", "dr3", "robomimic", "rollouts", "grasp"}
TARGET_ROWS = {  # (case, start of the measure) of every row that carries a target
    ("pipeline", "pipeline efficiency"),
    ("robomimic", "ours / robomimic matched"),
    ("robomimic", "ours / robomimic default"),
    ("dr3", "time per step, DR3 on (encoder) / off"),
    ("dr3", "time per step, DR3 on (penultimate) / off"),
    ("memory", "resident bytes per transition"),
    ("rollouts", "32px per worker"),  # the quick settings' image size
    ("rollouts", "32px ours "),  # ours N workers / like-for-like serial loop
    ("rollouts", "32px worker scaling"),
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
        if r["case"] == "grasp" and r["value"] is None:  # the quick run's 2 steps cannot grasp, and says so
            assert r["note"] == "not reached (quick settings)" and r["measure"].startswith("time to a grasping"), r
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
            op, bound = r["target"].split()
            margin = abs(r["value"] - float(bound)) / r["value"]
            if r["spread"] is not None and r["spread"] > margin:  # the range covers the target: no verdict
                assert r["noisy"] is True and r["met"] is None
            else:
                assert r["noisy"] is False and isinstance(r["met"], bool)
                assert r["met"] == (r["value"] >= float(bound) if op == ">=" else r["value"] <= float(bound))
    # every rollout figure says where its time went
    for r in rows:
        if r["case"] == "rollouts" and r["unit"] == "steps/s":
            assert "per env step: sim" in r["note"] and "policy" in r["note"], r

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


def test_a_target_inside_the_spread_is_within_noise_not_met():
    from benchmarks.common import Timing, judge, ratio_row, target_row

    assert judge(3.2, 0.05, 3.0) == (">= 3", True, False)  # margin 6.25% > spread 5%: met
    assert judge(3.2, 0.10, 3.0) == (">= 3", None, True)  # spread 10% > margin: no verdict
    assert judge(2.5, 0.10, 3.0) == (">= 3", False, False)  # margin 20%: missed
    assert judge(0.96, 0.20, 1.1, lower_is_better=True) == ("<= 1.1", None, True)  # margin 14.6%
    assert judge(0.96, 0.07, 1.1, lower_is_better=True) == ("<= 1.1", True, False)
    assert judge(0.96, 0.07, None) == ("", None, False)
    row = ratio_row("x", "a / b", Timing([2.0, 2.2]), Timing([1.0]), target=2.0)  # 2.1x, spread 0.0952
    assert row.noisy and row.met is None and row.value == pytest.approx(2.1)
    row = target_row("x", "scaling", Timing([0.95, 0.97, 0.96]), 0.9)
    assert (row.met, row.noisy, row.samples) == (True, False, [0.95, 0.97, 0.96])


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_runs_every_step_and_writes_one_json_and_one_table(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in res["steps"]}
    assert list(steps) == ["cuda_tests", "grid", "train_eval"] and all(s["status"] == "ok" for s in steps.values())
    assert res["dry"] is True and res["machine"]["gpu"] is None
    # the cuda-marked tests were selected (and skipped: no GPU here), nothing else ran
    assert steps["cuda_tests"]["figures"].get("skipped", 0) >= 3 and "passed" not in steps["cuda_tests"]["figures"]
    rows = steps["grid"]["figures"]["rows"]
    assert len(rows) == 1 and rows[0]["value"] > 0 and "GFLOP/update" in rows[0]["note"] and "MFU" in rows[0]["note"]
    f = steps["train_eval"]["figures"]
    assert f["train_steps_per_s"] > 0 and re.fullmatch(r"\d+/2", f["success"]) and f["eval_env_steps_per_s"] > 0
    table = (out / "gpu_check.md").read_text()
    assert table in proc.stdout and table.count("\n| ") == 5  # header, 3 steps, 1 grid figure
    for name in ("cuda_tests", "grid", "train_eval"):
        assert (out / f"{name}.log").is_file()


def test_gpu_check_refuses_to_run_for_real_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from benchmarks.gpu_check import main

    assert main(["--out", str(tmp_path)]) == 2
