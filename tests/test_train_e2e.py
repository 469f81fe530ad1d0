"""End to end through the real CLI: ``python train.py`` in a subprocess on a real generated dataset."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def train(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def column(rows, name):
    return [float(r[name]) for r in rows if r.get(name) not in (None, "")]


def test_train_cli_leaves_a_complete_run_folder(lift_dataset, tmp_path):
    out = tmp_path / "run"
    r = train(["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "7", "--batch-size", "8",
               "--output-dir", str(out), "--log-every", "2", "--checkpoint-every", "4",
               "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2"],
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training summary" in r.stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["max_steps"] == 7 and cfg["batch_size"] == 8 and cfg["dr3"]["coef"] == 0.01
    rows = read_metrics(out / "metrics.csv")
    for name in ("critic_loss", "cql_loss", "dr3_loss", "dr3_dot", "srank", "q_mean", "actor_loss", "alpha",
                 "dr3_cos", "target_q", "grad_norm_critic", "pen_dr3_dot"):
        vals = column(rows, name)
        # steps 1, 3, 5 ((step + 1) % log_every == 0) and the last, 6 (7 is not a multiple of log_every)
        assert len(vals) == 4, (name, vals)
    assert sorted({int(float(r["step"])) for r in rows if r.get("critic_loss")}) == [1, 3, 5, 6]
    assert all(v != 0 for v in column(rows, "dr3_loss"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 7
    meta = ckpt["visual_dr3"]
    assert meta["config"]["max_steps"] == 7 and meta["config"]["task"] == "lift"
    assert meta["image_keys"] == ["agentview_image", "robot0_eye_in_hand_image"]
    assert meta["env_args"]["env_name"] == "Lift"
    assert any(k.startswith("q_target.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 1
    assert [g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]] == ["critic", "actor", "alpha"]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, "no offline wandb run"


def test_dr3_coef_zero_logs_zero_dr3_loss_but_still_measures_the_dot(lift_dataset, tmp_path):
    out = tmp_path / "run0"
    r = train(["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "3", "--batch-size", "8",
               "--output-dir", str(out), "--log-every", "1", "--dr3-coef", "0", "--wandb", "off",
               "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2"],
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(out / "metrics.csv")
    assert column(rows, "dr3_loss") == [0.0, 0.0, 0.0]
    assert all(v != 0 for v in column(rows, "dr3_dot"))
    assert not (out / "wandb").exists()


def test_bad_input_through_the_script_is_one_line_exit_2(tmp_path):
    r = train(["--task", "nope", "--output-dir", str(tmp_path / "r")], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown task 'nope'" in lines[0], r.stderr[-2000:]


@pytest.mark.parametrize("args, needle", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--dataset", "/nonexistent/x.hdf5"], "/nonexistent/x.hdf5"),
    (["--max-steps", "-1"], "--max_steps"),
    (["--dr3.bogus", "1"], "dr3.bogus"),
    (["--model.actor_encoder", "both"], "actor_encoder"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, capsys, monkeypatch):
    # in-process (main(argv)): the process boundary is tested once above
    from visual_dr3.app.train import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args + ["--output-dir", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "r").exists()  # nothing written


def test_existing_run_folder_is_protected(lift_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "2", "--batch-size", "8",
            "--output-dir", str(out), "--log-every", "1", "--wandb", "off", "--progress", "false",
            "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2"]
    assert train(args, cwd=tmp_path).returncode == 0
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    r = train(args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "already holds a run" in lines[0] and "--overwrite" in lines[0] \
        and "--resume" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
    r = train(args + ["--overwrite", "true", "--max-steps", "1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1


def test_divergence_stops_with_one_line_and_keeps_last_good_checkpoint(lift_dataset, tmp_path):
    out = tmp_path / "run"
    # A huge critic learning rate drives the weights (then Q-values and losses) to inf/nan within a few steps.
    args = ["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "40", "--batch-size", "8",
            "--output-dir", str(out), "--log-every", "4", "--checkpoint-every", "1", "--wandb", "off",
            "--progress", "false", "--algo.critic_lr", "1e30",
            "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2"]
    r = train(args, cwd=tmp_path)
    assert r.returncode == 3, (r.stdout[-1000:], r.stderr[-3000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "diverged" in lines[0] and "non-finite" in lines[0] and "at step" in lines[0], \
        r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    bad_step = int(re.search(r"at step (\d+) \(checked at step", lines[0]).group(1))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in ckpt["state_dict"].items():
        assert torch.isfinite(v).all(), k
    # saved every step: the last checkpoint is the state just before the failing step (its updates 0..S-1)
    assert ckpt["global_step"] == bad_step < 40


def test_unwritable_output_dir_and_too_many_gpus_are_one_line(lift_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [(["--output-dir", str(blocker / "run")], "--output-dir"),
             (["--output-dir", str(tmp_path / "r"), "--accelerator", "gpu",
               "--devices", str(torch.cuda.device_count() + 1)], "--devices")]
    for args, needle in cases:
        r = train(["--task", "lift", "--dataset", str(lift_dataset), *args], cwd=tmp_path, timeout=120)
        assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr


def test_resume_from_checkpoint_of_other_networks_is_one_line(lift_dataset, tmp_path):
    common = ["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "1", "--batch-size", "8",
              "--wandb", "off", "--progress", "false", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2"]
    a = tmp_path / "a"
    assert train(common + ["--output-dir", str(a), "--model.feature_dim", "32"], cwd=tmp_path).returncode == 0
    r = train(common + ["--output-dir", str(tmp_path / "b"), "--model.feature_dim", "16", "--resume",
                        str(a / "checkpoints" / "last.ckpt")], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "another configuration" in lines[0] and "model" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["truncated", "other_task"])
def test_bad_dataset_through_the_cli_is_one_line(case, lift_dataset, tmp_path):
    if case == "truncated":
        bad = tmp_path / "half.hdf5"
        data = lift_dataset.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        args, needle = ["--task", "lift", "--dataset", str(bad)], str(bad)
    else:  # a lift dataset given to the stack task
        args, needle = ["--task", "stack", "--dataset", str(lift_dataset)], "made for task 'lift'"
    r = train(args + ["--output-dir", str(tmp_path / "r")], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
