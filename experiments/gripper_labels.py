"""Is "start closing" a function of one frame? The gripper labels of a dataset's open-finger states, by height.

    python -m experiments.gripper_labels --dataset data/lift_expert_48px_100ep.hdf5
    python -m experiments.gripper_labels --dataset data/pick_place_expert_48px_100ep.hdf5 --task pick_place

A learner that sees one frame can only start closing where the frame says so. Once the fingers move, the frame
shows it and every later label is "close"; the decision that matters is made on frames whose fingers are still
fully open. For those frames this prints, per band of hand height over the object's resting centre, how many
there are and what share of them the demos label "close" (gripper action > 0). Where that share is well under
1/2 at every height, the mean of the labels stays below 0 everywhere, so a policy that regresses the mean
(deterministic acting) never starts closing (reports/learn_to_grasp/cpu/tuning_v4/).

Reads only the small arrays (``actions``, the hand position and finger joints of ``obs``); no image.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: (low, high) cm of hand height over the object's resting centre, the rows of the table
BANDS = ((-1.5, -0.8), (-0.8, -0.4), (-0.4, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.5))
#: height (m) at which each task's object rests with its centre: lift's cube (+-1 mm with the cube's size
#: draw), pick_place's can (measured after reset)
REST_Z = {"lift": 0.821, "pick_place": 0.860}


def label_table(height_cm: np.ndarray, finger: np.ndarray, gripper: np.ndarray, open_finger: float,
                bands: Sequence[tuple[float, float]] = BANDS) -> list[dict]:
    """Per height band: ``n_open`` frames whose finger joint is at least ``open_finger`` (fully open),
    ``close_share`` of them labelled close (``gripper > 0``; NaN when none) and ``n_all`` frames in the band."""
    rows = []
    for lo, hi in bands:
        band = (height_cm >= lo) & (height_cm < hi)
        opened = band & (finger >= open_finger)
        n = int(opened.sum())
        rows.append({"band": (lo, hi), "n_open": n, "n_all": int(band.sum()),
                     "close_share": float(np.mean(gripper[opened] > 0)) if n else float("nan")})
    return rows


def read_dataset(path: Path, rest_z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hand height over ``rest_z`` in cm, first finger joint, gripper action) over every frame of every demo."""
    import h5py

    heights, fingers, grippers = [], [], []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise SystemExit(f"error: --dataset {path}: no 'data' group (expected robomimic's HDF5 layout)")
        for name in f["data"]:
            demo = f["data"][name]
            for key in ("obs/robot0_eef_pos", "obs/robot0_gripper_qpos", "actions"):
                if key not in demo:
                    raise SystemExit(f"error: --dataset {path}: data/{name} has no '{key}'")
            heights.append(100 * (demo["obs/robot0_eef_pos"][:, 2] - rest_z))
            fingers.append(demo["obs/robot0_gripper_qpos"][:, 0])
            grippers.append(demo["actions"][:, -1])
    return np.concatenate(heights), np.concatenate(fingers), np.concatenate(grippers)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m experiments.gripper_labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="a dataset (robomimic HDF5 layout)")
    p.add_argument("--task", choices=sorted(REST_Z), default="lift", help="the dataset's task (default lift)")
    p.add_argument("--rest-z", type=float, default=None,
                   help=f"height (m) of the object's resting centre (default: the task's, {REST_Z})")
    p.add_argument("--open-margin", type=float, default=0.0005,
                   help="a frame is 'fully open' when its finger joint is within this (m) of the data's open "
                        "width (its 99th percentile; default 0.0005: the second closing step moves it ~1 mm)")
    args = p.parse_args(argv)
    if not args.dataset.is_file():
        raise SystemExit(f"error: --dataset {args.dataset}: no such file")
    rest_z = REST_Z[args.task] if args.rest_z is None else args.rest_z
    height, finger, gripper = read_dataset(args.dataset, rest_z)
    rows = label_table(height, finger, gripper, open_finger=float(np.percentile(finger, 99)) - args.open_margin)
    print(f"{args.dataset}: {len(height)} frames; open-finger frames by hand height over the object's centre")
    print(f"{'height (cm)':>14s} {'open frames':>12s} {'labelled close':>15s} {'all frames':>11s}")
    for r in rows:
        lo, hi = r["band"]
        share = "-" if r["n_open"] == 0 else f"{r['close_share']:.2f}"
        print(f"{f'[{lo:+.1f}, {hi:+.1f})':>14s} {r['n_open']:12d} {share:>15s} {r['n_all']:11d}")
    return rows


if __name__ == "__main__":
    main()
