"""Real DDP on CPU (2 processes, gloo) through the training code, in a subprocess (tests/ddp_script.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions", "2",
         "--wandb", "off", "--progress", "false"]


def ddp_run(dump: Path, train_args, own=(), timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_script.py"), str(dump), *own, "--", *train_args],
                       cwd=dump.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_two_process_cpu_ddp_keeps_ranks_identical(lift_dataset, tmp_path):
    out = tmp_path / "run"
    ddp_run(tmp_path / "dump", ["--task", "lift", "--dataset", str(lift_dataset), "--devices", "2",
                                "--accelerator", "cpu", "--max-steps", "4", "--batch-size", "8", "--log-every", "2",
                                "--output-dir", str(out), *SMALL])
    p0 = torch.load(tmp_path / "dump" / "params_rank0.pt")
    p1 = torch.load(tmp_path / "dump" / "params_rank1.pt")
    assert p0.keys() == p1.keys() and any(k.startswith("q_target.") for k in p0)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"{k} differs between ranks"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, p0[k])
    assert (out / "metrics.csv").read_text().count("\n") >= 3


def test_two_ranks_half_batch_equal_one_rank_full_batch(lift_dataset, tmp_path):
    # Deterministic part of the update: SARSA backup (a' from the data), DR3 on, CQL off. With CQL on, or a
    # TD backup, each rank draws its own random/policy actions, so the runs agree only in distribution.
    common = ["--task", "lift", "--dataset", str(lift_dataset), "--accelerator", "cpu", "--max-steps", "1",
              "--backup", "sarsa", "--cql.min_q_weight", "0", "--dr3-coef", "0.1", "--data.augment_pad", "0",
              *SMALL]
    ddp_run(tmp_path / "one", common + ["--devices", "1", "--batch-size", "16", "--output-dir",
                                        str(tmp_path / "r1")], own=["--fixed-batch", "16"])
    ddp_run(tmp_path / "two", common + ["--devices", "2", "--batch-size", "8", "--output-dir",
                                        str(tmp_path / "r2")], own=["--fixed-batch", "16"])
    g1 = torch.load(tmp_path / "one" / "grads_rank0.pt")
    g2 = torch.load(tmp_path / "two" / "grads_rank0.pt")
    g2b = torch.load(tmp_path / "two" / "grads_rank1.pt")
    critic = [k for k in g1 if k.startswith(("encoder.", "q."))]
    assert len(critic) > 4
    for k in critic:
        torch.testing.assert_close(g2[k], g2b[k], rtol=0, atol=0)  # all-reduced: identical on both ranks
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6)


def test_two_process_ddp_training_with_evaluation_through_train_py(lift_dataset, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset),
                        "--devices", "2", "--accelerator", "cpu", "--max-steps", "4", "--batch-size", "8",
                        "--log-every", "2", "--eval-every", "2", "--eval-episodes", "2", "--eval-workers", "1",
                        "--eval-horizon", "8", "--eval-videos", "1", "--output-dir", str(out), *SMALL],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    import json

    evals = sorted((out / "eval").glob("step_*.json"))
    assert [p.name for p in evals] == ["step_0000002.json", "step_0000004.json"]
    rep = json.loads(evals[-1].read_text())
    assert rep["summary"]["episodes"] == 2 and len(rep["records"]) == 2
    assert sorted(rec["episode"] for rec in rep["records"]) == [0, 1]
    assert all(rec["length"] <= 8 for rec in rep["records"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert list((out / "eval" / "videos").rglob("*.mp4"))
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "eval/success_rate" in header
