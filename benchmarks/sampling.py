"""Sampling from the resident replay vs reading the same transitions from HDF5; load time.

    .venv/bin/python benchmarks/sampling.py [--demos 400 --steps 50 --size 84 --compression lzf --reps 100]

Writes a file in our layout (two cameras of random uint8 pixels, frame chunks (1, H, W, 3), compressed; no
next_obs unless --next-obs), loads it with ``load_replay`` and prints median milliseconds for:
  - ``replay.sample(256)`` (index draw + gather of s and s' of both cameras, proprio, a, a', r, done),
  - the same plus ``random_shift`` (pad 4) of s and s' of both cameras, as the datamodule does,
  - reading the same 256 transitions (s and s' frames of both cameras) from the HDF5 file: one slice read
    per transition and camera (what a map-style Dataset's __getitem__ does), and one sorted fancy-index
    read per demo and camera (the best case for h5py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from visual_dr3.data.augment import random_shift
from visual_dr3.data.replay import load_replay
from visual_dr3.envs.tasks import get_task

CAMS = list(get_task("lift").image_keys)
PROPRIO = ["robot0_eef_pos", "robot0_gripper_qpos"]


def write(path: Path, demos: int, steps: int, size: int, compression: str, next_obs: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    kw = dict(chunks=(1, size, size, 3), compression=None if compression == "none" else compression)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = steps
            g.create_dataset("actions", data=rng.uniform(-1, 1, (steps, 7)).astype(np.float32))
            g.create_dataset("rewards", data=np.zeros(steps, np.float32))
            dones = np.zeros(steps, np.int64)
            dones[-1] = i % 2
            g.create_dataset("dones", data=dones)
            groups = ["obs", "next_obs"] if next_obs else ["obs"]
            for grp in groups:
                og = g.create_group(grp)
                for k in CAMS:
                    og.create_dataset(k, data=rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8), **kw)
                og.create_dataset("robot0_eef_pos", data=rng.normal(size=(steps, 3)))
                og.create_dataset("robot0_gripper_qpos", data=rng.normal(size=(steps, 2)))
        data.attrs["total"] = demos * steps
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})


def median_ms(fn, reps: int, warmup: int = 3) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=int, default=400)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    ap.add_argument("--next-obs", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--h5-reps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--file", default=None, help="reuse/keep this file (default: a temporary one, deleted)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.file:
        path = Path(args.file)
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "bench.hdf5"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"cpus {os.cpu_count()}")
    if not path.exists():
        t0 = time.perf_counter()
        write(path, args.demos, args.steps, args.size, args.compression, args.next_obs)
        print(f"wrote {path.name}: {args.demos} demos x {args.steps} steps, 2 cameras {args.size}x{args.size}, "
              f"{args.compression}, next_obs={args.next_obs}: {path.stat().st_size / 2**20:.0f} MiB "
              f"in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    rb = load_replay(str(path), CAMS, PROPRIO, action_dim=7, device=args.device, progress=False)
    if rb.device.type == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    print(f"load_replay: {load_s:.2f} s (page cache warm), {rb.num_frames} frames, {rb.num_transitions} "
          f"transitions, resident {rb.nbytes / 2**20:.0f} MiB")

    g = torch.Generator(device=rb.device)
    g.manual_seed(0)
    sync = torch.cuda.synchronize if rb.device.type == "cuda" else (lambda: None)
    B = args.batch

    def sample():
        rb.sample(B, g)
        sync()

    def sample_shift():
        b = rb.sample(B, g)
        for k in CAMS:
            both = random_shift(torch.cat([b.obs[k], b.next_obs[k]]), 4, g)
        sync()

    ms_sample = median_ms(sample, args.reps)
    ms_shift = median_ms(sample_shift, args.reps)
    print(f"resident sample({B}):                 median {ms_sample[0]:.2f} ms (min {ms_sample[1]:.2f}) "
          f"over {args.reps}")
    print(f"resident sample({B}) + random_shift:  median {ms_shift[0]:.2f} ms (min {ms_shift[1]:.2f}) "
          f"over {args.reps}")

    # The same kind of batch read from HDF5: per transition, s and s' of both cameras.
    gh = torch.Generator(device=rb.device)
    gh.manual_seed(1)

    with h5py.File(path, "r") as f:
        data = f["data"]
        # Frame ids of sampled transitions -> (demo, step), with the replay's frame layout: demos in natural
        # order, each its T frames (+1 when the file has next_obs).
        names = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        lens = np.array([data[k]["actions"].shape[0] for k in names])
        has_next = "next_obs" in data[names[0]]
        starts = np.concatenate([[0], np.cumsum(lens + int(has_next))[:-1]])

        def draw():
            t, _ = rb.sample_indices(B, gh)
            oi = rb.obs_index[t].cpu().numpy()
            d = np.searchsorted(starts, oi, side="right") - 1
            return d, oi - starts[d]

        def read_slices():
            demo, step = draw()
            out = {k: [] for k in CAMS}
            for d, s in zip(demo.tolist(), step.tolist()):
                g_ = data[names[d]]
                for k in CAMS:
                    if has_next:
                        out[k].append(np.concatenate([g_["obs"][k][s:s + 1], g_["next_obs"][k][s:s + 1]]))
                    else:
                        out[k].append(g_["obs"][k][s:min(s + 2, lens[d])])
            return {k: torch.from_numpy(np.concatenate(v)).permute(0, 3, 1, 2).contiguous() for k, v in out.items()}

        def read_fancy():
            demo, step = draw()
            out = {k: [] for k in CAMS}
            for d in np.unique(demo).tolist():
                idx = np.unique(np.concatenate([step[demo == d], np.minimum(step[demo == d] + 1, lens[d] - 1)]))
                g_ = data[names[d]]
                for k in CAMS:
                    out[k].append(g_["obs"][k][idx])  # sorted index list: h5py's fancy indexing
            return {k: torch.from_numpy(np.concatenate(v)) for k, v in out.items()}

        ms_slices = median_ms(read_slices, args.h5_reps, warmup=1)
        ms_fancy = median_ms(read_fancy, args.h5_reps, warmup=1)
    print(f"HDF5 slice read per transition ({B}, s+s', 2 cams): median {ms_slices[0]:.1f} ms "
          f"(min {ms_slices[1]:.1f}) over {args.h5_reps}")
    print(f"HDF5 sorted fancy read per demo ({B}, s+s', 2 cams): median {ms_fancy[0]:.1f} ms "
          f"(min {ms_fancy[1]:.1f}) over {args.h5_reps}")
    print(f"median ratio HDF5 slice reads / resident sample: {ms_slices[0] / ms_sample[0]:.0f}x")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus); other processes "
              f"inflate these figures")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
