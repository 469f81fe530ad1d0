"""Tiny robomimic-layout HDF5 files written directly with h5py, for the replay tests.

Every value encodes where it came from, so a test can check a sampled transition exactly:

- image pixel (all of a frame): channel 0 = demo number, channel 1 = step t (T for the extra
  ``next_obs`` frame of the last step), channel 2 = 16 * camera number + file_id;
- proprio ``robot0_eef_pos`` (3,) = [file_id, demo, t]; ``robot0_gripper_qpos`` (2,) = [t + 0.5, -t];
- actions (A,) = [demo, t, file_id, 0.1, 0.2, ...]; rewards = 1000 * demo + t + 0.25;
- dones: 1 at the last step of a successful demo, else 0.

``ours=True`` writes our layout (frame chunks (1, H, W, 3), gzip, ``data.attrs['visual_dr3']``);
otherwise robomimic's own style (contiguous datasets, no ``visual_dr3`` attr). ``next_obs`` toggles the
``next_obs`` groups (robomimic's ``--exclude-next-obs`` files have none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import h5py
import numpy as np

CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")
PROPRIO = ("robot0_eef_pos", "robot0_gripper_qpos")
PROPRIO_DIM = 5
ENV_ARGS = {"env_name": "Lift", "env_version": "1.5.2", "type": 1, "env_kwargs": {"horizon": 50}}


def frame_pixels(demo: int, t: int, cam: int, file_id: int) -> tuple[int, int, int]:
    return demo, t, 16 * cam + file_id


def reward_of(demo: int, t: int) -> float:
    return 1000.0 * demo + t + 0.25


def _obs_arrays(demo: int, steps: np.ndarray, size: tuple[int, int], file_id: int,
                cameras: Sequence[str]) -> dict[str, np.ndarray]:
    n = len(steps)
    h, w = size
    out: dict[str, np.ndarray] = {}
    for c, key in enumerate(cameras):
        img = np.empty((n, h, w, 3), dtype=np.uint8)
        img[..., 0] = demo
        img[..., 1] = steps[:, None, None]
        img[..., 2] = 16 * c + file_id
        out[key] = img
    out["robot0_eef_pos"] = np.stack([np.full(n, file_id), np.full(n, demo), steps], 1).astype(np.float64)
    out["robot0_gripper_qpos"] = np.stack([steps + 0.5, -steps], 1).astype(np.float64)
    out["object-state"] = np.zeros((n, 4), dtype=np.float64)
    return out


def write_file(path, lengths: Sequence[int] = (5, 3, 4), successes: Optional[Sequence[bool]] = None,
               *, next_obs: bool = True, ours: bool = False, masks: Optional[dict[str, Sequence[str]]] = None,
               file_id: int = 0, size=8, cameras: Sequence[str] = CAMERAS, action_dim: int = 7,
               env_args: Optional[dict] = ENV_ARGS, tamper: Optional[Callable[[h5py.File], None]] = None) -> Path:
    """Write a tiny file; demo i (``demo_i``) has ``lengths[i]`` steps and succeeds when ``successes[i]``
    (default: even demos succeed). ``tamper(f)`` may edit the open file before it is closed."""
    path = Path(path)
    if successes is None:
        successes = [i % 2 == 0 for i in range(len(lengths))]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    img_kw = dict(chunks=(1, hw[0], hw[1], 3), compression="gzip") if ours else {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, (T, ok) in enumerate(zip(lengths, successes)):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = "<mujoco/>"
            steps = np.arange(T)
            acts = np.zeros((T, action_dim), dtype=np.float32 if ours else np.float64)
            acts[:, 0] = i
            acts[:, 1] = steps
            acts[:, 2] = file_id
            acts[:, 3:] = 0.1 * np.arange(1, action_dim - 2)
            g.create_dataset("actions", data=acts)
            g.create_dataset("rewards", data=np.array([reward_of(i, t) for t in steps],
                                                       dtype=np.float32 if ours else np.float64))
            dones = np.zeros(T, dtype=np.int64)
            dones[-1] = int(ok)
            g.create_dataset("dones", data=dones)
            g.create_dataset("states", data=np.zeros((T, 10)))
            obs = _obs_arrays(i, steps, hw, file_id, cameras)
            og = g.create_group("obs")
            for k, v in obs.items():
                og.create_dataset(k, data=v, **(img_kw if v.ndim == 4 else {}))
            if next_obs:
                nobs = _obs_arrays(i, steps + 1, hw, file_id, cameras)
                ng = g.create_group("next_obs")
                for k, v in nobs.items():
                    ng.create_dataset(k, data=v, **(img_kw if v.ndim == 4 else {}))
            total += T
        data.attrs["total"] = total
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args)
        if ours:
            data.attrs["visual_dr3"] = json.dumps({"task": "lift", "kind": "mixed", "image_size": hw[0],
                                                   "cameras": [c.replace("_image", "") for c in cameras],
                                                   "proprio_keys": list(PROPRIO), "seed": 0, "render": {},
                                                   "episodes": len(lengths), "version": 1})
        if masks:
            mg = f.create_group("mask")
            for k, names in masks.items():
                mg.create_dataset(k, data=np.array(list(names), dtype="S"))
        if tamper is not None:
            tamper(f)
    return path


def decode_images(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (B, 3) int: (demo, t, 16 * camera + file_id), checking frames are uniform."""
    images = np.asarray(images)
    first = images[:, :, :1, :1]
    assert (images == first).all(), "a fixture frame is not uniform"
    return first[:, :, 0, 0].astype(np.int64)
