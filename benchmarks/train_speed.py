"""Training steps/s of the full update (sample + augment + CQL/DR3/SAC update + optimizer step).

    python benchmarks/train_speed.py [--batch-size 256] [--image-size 84] [--steps 20] [--device cpu]
        [--encoder drq] [--dataset FILE]

Prints steps/s with DR3 off (c0 = 0) and on (encoder features; penultimate), the DR3 overhead as a ratio,
and the compute-only bound (the same update on one fixed batch already on the device). Without
``--dataset`` it uses a synthetic resident replay of random uint8 frames (same shapes as a real one).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch

import visual_dr3  # noqa: F401
from visual_dr3.data.replay import ResidentReplay, SourceSpec, load_replay
from visual_dr3.learner.config import TrainConfig, to_dict
from visual_dr3.learner.datamodule import augment_batch
from visual_dr3.learner.module import DR3CQL
from visual_dr3.learner.update import compute_update

KEYS = ["agentview_image", "robot0_eye_in_hand_image"]
PROPRIO = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]


def synthetic_replay(frames: int, size: int, device: torch.device) -> ResidentReplay:
    g = torch.Generator().manual_seed(0)
    n = frames - 1
    ids = torch.arange(n)
    return ResidentReplay(
        frames={k: torch.randint(0, 256, (frames, 3, size, size), generator=g, dtype=torch.uint8).to(device)
                for k in KEYS},
        proprio=torch.randn(frames, 9, generator=g).to(device), obs_index=ids.to(device),
        next_index=(ids + 1).to(device), action=(torch.rand(n, 7, generator=g) * 2 - 1).to(device),
        next_action=(torch.rand(n, 7, generator=g) * 2 - 1).to(device), reward=torch.zeros(n, device=device),
        done=torch.zeros(n, device=device), source_tables=[ids], sources=[SourceSpec(path="synthetic")],
        weights=[1.0], image_keys=KEYS, proprio_keys=PROPRIO, proprio_dims=(3, 4, 2), action_dim=7,
        image_size=(size, size), env_args={}, meta={}, metas=[{}], files=["synthetic"], device=device)


def bench(cfg: TrainConfig, replay: ResidentReplay, steps: int, warmup: int, fixed: bool, device) -> list[float]:
    torch.manual_seed(0)
    module = DR3CQL(to_dict(cfg), KEYS, PROPRIO, replay.proprio_dim, replay.image_size[0], 7).to(device)
    opt = module.configure_optimizers()
    gen = torch.Generator(device=device).manual_seed(0)
    fixed_batch = augment_batch(replay.sample(cfg.batch_size, gen), cfg.data.augment_pad, gen)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = fixed_batch if fixed else augment_batch(replay.sample(cfg.batch_size, gen), cfg.data.augment_pad, gen)
        out = compute_update(module.nets(), batch, cfg, 10_000, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        torch._foreach_lerp_(list(module.q_target.parameters()), list(module.q.parameters()), cfg.algo.tau)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--encoder", default="drq")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    replay = (load_replay([SourceSpec(a.dataset)], KEYS, PROPRIO, action_dim=7, device=device) if a.dataset
              else synthetic_replay(a.frames, a.image_size, device))
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "-"
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, gpu {gpu}")
    print(f"batch {a.batch_size}, {replay.image_size} images x {len(KEYS)} cameras, encoder {a.encoder}, "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    base = TrainConfig(batch_size=a.batch_size)
    base.model.encoder = a.encoder
    rows = []
    for name, coef, feats, fixed in [("DR3 off (c0=0)", 0.0, "encoder", False),
                                     ("DR3 on, encoder", 0.01, "encoder", False),
                                     ("DR3 on, penultimate", 0.01, "penultimate", False),
                                     ("DR3 on, fixed batch (compute only)", 0.01, "encoder", True)]:
        cfg = copy.deepcopy(base)
        cfg.dr3.coef, cfg.dr3.features = coef, feats
        t = bench(cfg, replay, a.steps, a.warmup, fixed, device)
        med = statistics.median(t)
        rows.append((name, 1.0 / med, (max(t) - min(t)) / med))
        print(f"  {name:38s} {1.0 / med:8.2f} steps/s  ({a.batch_size / med:8.0f} samples/s, "
              f"spread {100 * rows[-1][2]:.0f}%)", flush=True)
    off, on = rows[0][1], rows[1][1]
    print(f"DR3 overhead (encoder): {off / on:.3f}x time per step ({100 * (off / on - 1):+.1f}%)")
    print(f"pipeline efficiency (sampled / fixed batch): {on / rows[3][1]:.3f}")


if __name__ == "__main__":
    main()
