"""Real DDP on CPU (2 processes, gloo) through the training code, in a subprocess (tests/ddp_script.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visual_dr3.evaluation.stats import episode_seed

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


def test_two_process_cpu_ddp_keeps_ranks_identical_and_evaluates_on_every_rank(lift_dataset, tmp_path):
    """One 2-process run through the training code (real Trainer, DDP on gloo) with an evaluation every 2 steps
    and at the end: the ranks' parameters stay identical and are the checkpoint's; both ranks hold the same
    gathered evaluation; rank 0 alone writes the files (JSONs, best.ckpt, videos, wandb media, CSV)."""
    out, dump = tmp_path / "run", tmp_path / "dump"
    ddp_run(dump, ["--task", "lift", "--dataset", str(lift_dataset), "--devices", "2", "--accelerator", "cpu",
                   "--max-steps", "3", "--batch-size", "8", "--log-every", "1", "--output-dir", str(out),
                   "--eval-every", "2", "--eval-episodes", "3", "--eval-workers", "1", "--eval-horizon", "6",
                   "--eval-videos", "1", *SMALL, "--wandb", "offline"])
    p0 = torch.load(dump / "params_rank0.pt")
    p1 = torch.load(dump / "params_rank1.pt")
    assert p0.keys() == p1.keys() and any(k.startswith("q_target.") for k in p0)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"{k} differs between ranks"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 3
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, p0[k])
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 2 and "visual_dr3" in best  # no later evaluation beat the first
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 4 and "eval/success_rate" in rows[0] and "eval/success_ci95_high" in rows[0]

    # evaluated at step 2 (every 2) and at the end (step 3); both ranks hold the same gathered results
    res = [json.loads((dump / f"eval_rank{k}.json").read_text()) for k in (0, 1)]
    for x in res:
        assert x["last_eval_step"] == 3 and x["episodes"] == [0, 1, 2] and x["best_step"] == 2
        assert set(x["metrics"]) >= {"eval/success_rate", "eval/success_ci95_low", "eval/success_ci95_high",
                                     "eval/return", "eval/length"}
    assert res[0]["metrics"] == res[1]["metrics"] and res[0]["summary"] == res[1]["summary"]
    assert res[0]["summary"]["episodes"] == 3 and res[0]["summary"]["mean_length"] <= 6
    # rank 0 alone wrote the files: one JSON per evaluation, with every rank's episodes
    evals = sorted(p.name for p in (out / "eval").glob("step_*.json"))
    assert evals == ["step_0000002.json", "step_0000003.json"]
    rep = json.loads((out / "eval" / "step_0000003.json").read_text())
    assert [x["episode"] for x in rep["records"]] == [0, 1, 2] and rep["world_size"] == 2
    assert [x["seed"] for x in rep["records"]] == [episode_seed(0, i) for i in range(3)]
    assert all(x["length"] <= 6 for x in rep["records"])
    # the pool's own setting: rank 0's 2 episodes on 1 worker, 2 envs in the parent's mode, 1 in the workers'
    assert rep["envs_per_worker"] == {"parent": 2, "workers": 1}[rep["policy_in"]]
    # videos of rank 0's first episode (episode 0) at each evaluation, also logged to wandb
    vids = sorted(p.relative_to(out / "eval" / "videos").as_posix() for p in (out / "eval" / "videos").rglob("*.mp4"))
    assert [v.split("/")[0] for v in vids] == ["step_0000002", "step_0000003"]
    assert all(v.split("/")[1].startswith("ep0000_") for v in vids)
    assert list((out / "wandb").rglob("media/videos/eval/*.mp4"))


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
