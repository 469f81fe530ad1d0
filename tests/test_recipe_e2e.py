"""The recipe through the real CLIs: the cpu preset is applied and recorded; behaviour cloning trains, saves and
is evaluated by eval.py like any checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from visual_dr3.app.cli_args import CONFIGS_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TINY = ["--batch-size", "8", "--model.feature_dim", "32", "--model.hidden_dims", "[32,32]", "--cql.num_actions",
        "2", "--log-every", "2", "--wandb", "off", "--progress", "false"]


def run(script, args, cwd, **env):
    e = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", **env)
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=600)


def test_cpu_preset_is_layered_recorded_and_announced(lift_dataset, tmp_path):
    out = tmp_path / "cpu"
    r = run("train.py", ["--task", "lift", "--preset", "cpu", "--dataset", lift_dataset, "--output-dir", out,
                         "--max-steps", "4", "--eval-every", "0", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[visual-dr3] preset cpu (" in r.stdout  # the choice and why, in one line
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # configs/cpu/lift.yaml over configs/lift.yaml, flags over both
    want = yaml.safe_load((CONFIGS_DIR / "cpu" / "lift.yaml").read_text())
    assert cfg["preset"] == "cpu" and cfg["max_steps"] == 4 and cfg["batch_size"] == 8
    assert all(cfg["algo"][k] == v for k, v in want["algo"].items())
    assert cfg["data"]["image_size"] == want["data"]["image_size"] and cfg["dr3"]["coef"] == 0.01
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["dataset_stats"]["fixed_actions"][3:6] == [0.0, 0.0, 0.0]  # the scripted data never rotates
    assert ckpt["state_dict"]["q.heads.0.body.0.weight"].shape[1] == 32 + 4  # phi + (x, y, z, gripper)
    # the preset acts with the moving average of the actor (and the encoder it reads); eval.py can pick either:
    # through the CLI by default, and each choice on the checkpoint's networks in-process
    assert cfg["algo"]["policy_ema"] > 0 and any(k.startswith("ema_actor.") for k in ckpt["state_dict"])
    r = run("eval.py", ["--checkpoint", out / "checkpoints" / "last.ckpt", "--episodes", 1, "--horizon", 4,
                        "--json", tmp_path / "auto.json", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "auto.json").read_text())["weights"] == "ema" and "moving-average" in r.stdout
    from visual_dr3.app.eval import build_parser
    from visual_dr3.checkpoint import load_policy
    from visual_dr3.evaluation.evaluate import choose_weights

    module, _, _ = load_policy(out / "checkpoints" / "last.ckpt", "cpu")
    for weights, nets in (("trained", (module.actor_encoder or module.encoder, module.actor)),
                          ("ema", (module.ema_encoder, module.ema_actor)),
                          ("auto", (module.ema_encoder, module.ema_actor))):
        assert build_parser().parse_args(["--checkpoint", "x", "--weights", weights]).weights == weights
        assert choose_weights(module, weights) == {"auto": "ema"}.get(weights, weights)
        assert all(a is b for a, b in zip(module.acting_nets(), nets))
    assert not torch.equal(module.ema_actor.out.weight, module.actor.out.weight)  # they do differ


def test_bc_trains_and_evaluates_through_the_clis(lift_dataset, tmp_path):
    out = tmp_path / "bc"
    r = run("train.py", ["--task", "lift", "--algorithm", "bc", "--dataset", lift_dataset, "--output-dir", out,
                         "--max-steps", "6", "--eval-every", "0", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "algorithm        bc" in r.stdout
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith(("q.", "q_target.")) for k in ckpt["state_dict"])
    assert [g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]] == ["actor"]
    r = run("eval.py", ["--checkpoint", out / "checkpoints" / "last.ckpt", "--episodes", 2, "--workers", 1,
                        "--horizon", 8, "--json", tmp_path / "e.json", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["summary"]["episodes"] == 2 and all(1 <= x["length"] <= 8 for x in rep["records"])
    # resuming a BC checkpoint as CQL is a one-line error naming the key
    r = run("train.py", ["--task", "lift", "--dataset", lift_dataset, "--output-dir", out, "--resume", "auto",
                         "--max-steps", "8", *TINY], tmp_path)
    assert r.returncode == 2 and "algorithm: checkpoint 'bc', now 'cql'" in r.stderr
