"""On a CUDA device (skipped without one; ``python -m pytest -m cuda`` selects these, as the GPU check does):
a short GPU training run through the real CLI with the replay on the GPU, bf16 and compile, then the policy on
the GPU against the same policy on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_training_run_with_resident_replay_bf16_and_compile(lift_dataset, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset),
                        "--output-dir", str(out), "--max-steps", "12", "--batch-size", "32", "--log-every", "4",
                        "--accelerator", "gpu", "--data.device", "cuda", "--precision", "bf16-mixed", "--compile",
                        "true", "--wandb", "off", "--eval-every", "12", "--eval-episodes", "2", "--eval-horizon",
                        "5", "--eval-workers", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert (out / "eval" / "step_0000012.json").is_file()


def test_policy_on_the_gpu_acts_as_on_the_cpu(lift_dataset):
    from visual_dr3.envs.tasks import get_task
    from visual_dr3.learner.config import TrainConfig, to_dict
    from visual_dr3.learner.module import DR3CQL

    task = get_task("lift")
    torch.manual_seed(0)
    m = DR3CQL(to_dict(TrainConfig(task="lift")), list(task.image_keys), list(task.proprio_keys), 9, 32,
               task.action_dim).eval()
    obs = {k: torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8) for k in task.image_keys}
    obs["proprio"] = torch.randn(4, 9)
    cpu = m.act(obs)
    gpu = m.to("cuda").act({k: v.cuda() for k, v in obs.items()}).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)  # TF32 matmuls on the GPU
