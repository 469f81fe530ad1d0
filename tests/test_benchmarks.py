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

#: every case but ``grasp`` (train.py generating its dataset in an empty folder, training and evaluating: what
#: tests/test_package.py does through the installed console scripts); here it would be one more run from scratch
EXPECTED_CASES = {"datagen", "memory", "pipeline", "dr3", "robomimic", "rollouts"}
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
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--json", str(out),
                           "--only", *sorted(EXPECTED_CASES), "scaling"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["failed_cases"] == []
    m = res["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["device"] == "cpu" and m["gpu"] is None
    assert res["settings"]["quick"] is True

    rows = res["rows"]
    cases = {r["case"] for r in rows}
    assert cases == EXPECTED_CASES | {"scaling"}
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


#: what the GPU check's steps print, as they print it (pytest's closing line; the grid's progress line, here
#: the only trace of a grid cut short; train.py's summary)
CANNED_CUDA_LOG = "sss" + "\n" + "3 skipped, 412 deselected in 9.81s\n"
CANNED_GRID_LOG = ("[scaling] train.py steps/s, batch 256, drq, 32-true, compile off: 41.2 steps/s; 10,547 "
                   "samples/s; 61.3 GFLOP/update; MFU 0.3%\n")
CANNED_TRAIN_LOG = """
== visual-dr3 training summary ==
  task             lift
  steps            1500
  seconds          88.4
  steps_per_s      16.97
  critic_loss      0.4127
"""


def test_gpu_check_commands_parse_and_its_parsers_read_canned_logs(tmp_path):
    """The check's commands (GPU and dry sizes) are valid command lines of the programs they start, and what
    each step prints becomes the right figures (in-process, on canned logs: running the steps is the GPU
    machine's job; the dry run's steps are each tested on their own elsewhere)."""
    from benchmarks import gpu_check
    from benchmarks.__main__ import build_parser as bench_parser
    from visual_dr3.app.cli_args import CONFIGS_DIR, parse_train_args
    from visual_dr3.data.generate import build_parser as gen_parser

    for sizes in (gpu_check.GPU, gpu_check.DRY):
        grid_cmd = gpu_check.grid_command(sizes, tmp_path / "g.json")
        assert grid_cmd[1:3] == ["-m", "benchmarks"] and bench_parser().parse_args(grid_cmd[3:]).only == ["scaling"]
        gen, train = gpu_check.train_eval_commands(sizes, tmp_path / "d.hdf5", tmp_path / "run")
        assert gen_parser().parse_args(gen[3:]).task == "lift" and train[1] == "train.py"
        cfg = parse_train_args(train[2:], configs_dir=CONFIGS_DIR)
        # a short learning run of the GPU preset: its method, an evaluation at the warm-up's end and after RL
        assert cfg.preset == "gpu" and cfg.algo.backup == "sarsa" and cfg.algo.policy_ema == 0.99
        assert cfg.eval_every == cfg.algo.bc_warmup_steps == cfg.max_steps // 2
        assert cfg.dataset == str(tmp_path / "d.hdf5")
    assert (cfg.max_steps, cfg.batch_size) == (4, 8)  # the dry sizes ...
    gpu_cfg = parse_train_args(gpu_check.train_eval_commands(gpu_check.GPU, tmp_path / "d", tmp_path / "r")[1][2:],
                               configs_dir=CONFIGS_DIR)
    assert (gpu_cfg.max_steps, gpu_cfg.batch_size, gpu_cfg.eval_episodes) == (2000, 256, 50)  # ... and the GPU's
    assert gpu_check.cuda_tests_command()[1:5] == ["-m", "pytest", "-m", "cuda"]

    assert gpu_check.parse_cuda_tests(CANNED_CUDA_LOG) == {"skipped": 3, "deselected": 412}
    assert gpu_check.parse_cuda_tests("4 passed, 1 failed in 30.1s") == {"passed": 4, "failed": 1}
    rows = gpu_check.parse_grid(CANNED_GRID_LOG, tmp_path / "absent.json")  # cut short: from the log
    assert rows == [{"case": "scaling", "measure": "train.py steps/s, batch 256, drq, 32-true, compile off",
                     "value": 41.2, "unit": "steps/s", "note": "10,547 samples/s; 61.3 GFLOP/update; MFU 0.3%"}]
    (tmp_path / "g.json").write_text(json.dumps({"rows": [{"case": "scaling", "measure": "m", "value": 1.0}]}))
    assert gpu_check.parse_grid(CANNED_GRID_LOG, tmp_path / "g.json") == [{"case": "scaling", "measure": "m",
                                                                            "value": 1.0}]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    for step, succ in ((750, 3), (1500, 14)):
        (run / "eval" / f"step_{step:07d}.json").write_text(json.dumps(
            {"summary": {"successes": succ, "episodes": 20, "env_steps_per_s": 123.456}}))
    assert gpu_check.parse_train_eval(CANNED_TRAIN_LOG, run) == {
        "train_steps_per_s": 16.97, "train_seconds": 88.4, "success_at": "750: 3/20, 1500: 14/20", "success": "14/20",
        "eval_env_steps_per_s": 123.5}
    assert gpu_check.parse_train_eval("[timed out after 150 s]", tmp_path / "none") == {}


def test_gpu_check_writes_one_json_and_one_table(tmp_path, monkeypatch, capsys):
    """main() on canned step outputs: every step recorded in order, one JSON, one table printed and written."""
    import torch

    from benchmarks import gpu_check

    def canned_run(name, cmds, out, limit):
        if name == "grid":
            log = CANNED_GRID_LOG
        elif name == "train_eval":
            log = CANNED_TRAIN_LOG
            (out / "run" / "eval").mkdir(parents=True)
            (out / "run" / "eval" / "step_0000004.json").write_text(json.dumps(
                {"summary": {"successes": 1, "episodes": 2, "env_steps_per_s": 7.0}}))
        else:
            log = CANNED_CUDA_LOG
        (out / f"{name}.log").write_text(log)
        return "ok", 1.5, log

    monkeypatch.setattr(gpu_check, "_run", canned_run)
    out = tmp_path / "gc"
    assert gpu_check.main(["--dry", "--out", str(out)]) == 0
    res = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in res["steps"]}
    assert list(steps) == ["cuda_tests", "grid", "train_eval"] and all(s["status"] == "ok" for s in steps.values())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    assert res["dry"] is True and res["machine"]["gpu"] == gpu
    assert steps["cuda_tests"]["figures"] == {"skipped": 3, "deselected": 412}
    assert steps["grid"]["figures"]["rows"][0]["value"] == 41.2
    assert steps["train_eval"]["figures"]["success"] == "1/2"
    table = (out / "gpu_check.md").read_text()
    assert table in capsys.readouterr().out and table.count("\n| ") == 5  # header, 3 steps, 1 grid figure
    assert "| train_eval | ok | 2 s | train_steps_per_s 16.97, train_seconds 88.4, success_at 4: 1/2, success 1/2, " \
           "eval_env_steps_per_s 7.0 |" in table


def test_gpu_check_script_refuses_an_unknown_argument():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: scripts/gpu_check.sh: unknown argument --bogus; expected --out DIR, "
                                   "--wheels DIR or --dry")


def test_gpu_check_refuses_to_run_for_real_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from benchmarks.gpu_check import main

    assert main(["--out", str(tmp_path)]) == 2
