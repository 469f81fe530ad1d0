"""What a critic believes about each mode of a stitching file: Q on the data's actions against their return, per mode.

    python -m experiments.stitch_values --checkpoint runs/stitch/checkpoints/last.ckpt \\
        --dataset data/lift_stitch_48px_100ep.hdf5

On the ``stitch`` kind (``python -m visual_dr3.data.generate --kind stitch``) offline RL can only succeed if values
are carried back from the task episodes (grasped cube -> lift) into the ``release`` episodes' approach (the grasp
that leads there), and not into the ``decoy`` episodes' (a grasp beside the cube). The data's own return is 0 on
every prior episode, so Q above that return on ``release`` and not on ``decoy`` is the stitched value. For each mask
this prints, over all its transitions and over the first ``--early`` steps of each episode (the approach from the
initial states, where the behaviour splits):

- ``Q(s,a)``: min of the twin Q heads at the data's action; ``MC``: the data's discounted return to go;
- ``Q(s,pi)``: at the policy's mean action (the action the policy is evaluated with);
- ``|pi-a|``: the distance between the policy's mean action and the data's (which mode the policy copies).

``--json`` also writes the table as JSON. The masks default to the ``stitch`` kind's; ``all`` is the whole file
(``--masks all`` reads any file, e.g. whether a critic sits above the return on expert data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a file: python experiments/stitch_values.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_dr3.errors import UserError, cli_entry  # noqa: E402

MASKS = ("release", "decoy", "task")
COLUMNS = ("q_data", "q_pi", "mc", "dist")


def episode_positions(obs_index: np.ndarray, next_index: np.ndarray) -> np.ndarray:
    """Position of each transition in its episode (0 = the episode's first), from the frame links: transition t
    runs frame ``obs_index[t]`` -> ``next_index[t]``; a transition whose first frame is nobody's next frame starts
    an episode, and its successor is the transition whose first frame is its next frame."""
    obs_index, next_index = np.asarray(obs_index), np.asarray(next_index)
    by_frame = {int(f): i for i, f in enumerate(obs_index)}
    is_next = set(int(f) for f in next_index)
    pos = np.full(len(obs_index), -1, dtype=np.int64)
    for i, f in enumerate(obs_index):
        if int(f) in is_next:
            continue
        k, j = 0, i
        while j is not None and pos[j] < 0:
            pos[j] = k
            k += 1
            j = by_frame.get(int(next_index[j]))
    return pos


def mode_values(module, replay, chunk: int = 256) -> dict[str, np.ndarray]:
    """Per transition of ``replay`` (every one, in id order): Q at the data's action, Q at the policy's mean
    action, the data's return to go and ||pi(s) - a||."""
    import torch

    ids = torch.unique(replay._src_table)
    enc, actor = module.trained_acting_nets()
    out: dict[str, list] = {k: [] for k in COLUMNS}
    with torch.no_grad():
        for start in range(0, ids.numel(), chunk):
            b = replay.gather(ids[start:start + chunk])
            phi = module.encoder(b.obs)
            a_pi = actor.mode(enc(b.obs))
            q1, q2 = module.q(phi, b.action)[:2]
            p1, p2 = module.q(phi, a_pi)[:2]
            out["q_data"].append(torch.min(q1, q2).reshape(-1))
            out["q_pi"].append(torch.min(p1, p2).reshape(-1))
            out["mc"].append(b.mc_return)
            out["dist"].append((a_pi - b.action).norm(dim=-1))
    values = {k: torch.cat(v).cpu().numpy() for k, v in out.items()}
    values["pos"] = episode_positions(replay.obs_index[ids].cpu().numpy(), replay.next_index[ids].cpu().numpy())
    return values


def table(rows: dict[str, dict]) -> str:
    head = "| mask | transitions | Q(s,a) | Q(s,pi) | MC | \\|pi-a\\| | early: Q(s,a) | Q(s,pi) | MC | \\|pi-a\\| |"
    lines = [head, "|" + "---|" * 10]
    for mask, r in rows.items():
        a, e = r["all"], r["early"]
        lines.append(f"| {mask} | {r['n']} | " + " | ".join(f"{a[k]:.3f}" for k in COLUMNS) + " | "
                     + " | ".join(f"{e[k]:.3f}" for k in COLUMNS) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.stitch_values", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint (.ckpt) with a critic")
    p.add_argument("--dataset", required=True, help="the stitching HDF5 file (with the masks below)")
    p.add_argument("--masks", nargs="+", default=list(MASKS), help=f"masks to compare, 'all' for the whole file (default {' '.join(MASKS)})")
    p.add_argument("--early", type=int, default=10, help="the first this many steps of each episode (default 10)")
    p.add_argument("--json", default=None, help="also write the table here as JSON")
    return p


def run(args) -> dict:
    from visual_dr3.checkpoint import load_policy
    from visual_dr3.data.replay import SourceSpec, load_replay

    module, meta, _ = load_policy(args.checkpoint, device="cpu")
    if module.q is None:
        raise UserError(f"--checkpoint {args.checkpoint}: a BC checkpoint has no critic; expected an RL run's")
    h = module.hparams
    cfg = module.cfg
    rows = {}
    for mask in args.masks:
        replay = load_replay(SourceSpec(path=args.dataset, filter_key=None if mask == "all" else mask), h["image_keys"], h["proprio_keys"],
                             expect_image_size=h["image_size"], n_step=1, discount=cfg.algo.discount,
                             reward_scale=cfg.algo.reward_scale, reward_bias=cfg.algo.reward_bias, progress=False)
        if len(module.learned_dims) != replay.action_dim:
            replay.select_action_dims(module.learned_dims)
        v = mode_values(module, replay)
        early = v["pos"] < args.early
        rows[mask] = {"n": int(v["pos"].size),
                      "all": {k: float(v[k].mean()) for k in COLUMNS},
                      "early": {k: float(v[k][early].mean()) for k in COLUMNS}}
    print(f"{args.checkpoint} on {args.dataset} (early = the first {args.early} steps of each episode)")
    print(table(rows))
    if args.json:
        from visual_dr3.fileio import write_json_atomic
        write_json_atomic(args.json, rows)
    return rows


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
