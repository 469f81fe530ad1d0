"""Where a grasping policy fails: trace a checkpoint's episodes through the grasp, one line per episode.

    python -m experiments.grasp_trace --checkpoint runs/lift/checkpoints/last.ckpt --episodes 8 --seed 1000

Success rates say *how often* a policy fails; this says *where*. Each episode runs serially in one env (the
checkpoint's, rebuilt as ``eval.py`` does, deterministic actions) and reads the simulator beside the policy:
the hand-to-object offset when the gripper is first commanded shut, the object's highest point, the closest the
hand came to the object in xy. Episodes are classed as

- ``success``;
- ``never closed``: the gripper was never commanded shut (e.g. the hand sits at the object, fingers open);
- ``closed off target``: first commanded shut with the hand more than 1.5 cm from the object in xy;
- ``closed, not lifted``: shut near the object but the object never rose 5 mm;
- ``lifted, no success``: the object rose but the episode ended without success.

Episode ``i`` starts from :func:`~visual_dr3.evaluation.stats.episode_seed` ``(seed, i)`` like every
evaluation: pick a seed that is not a reported evaluation's (training evaluations use the run seed).
``--steps`` prints every step (hand-object offset, finger width, action) of the failed episodes.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a file: python experiments/grasp_trace.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_dr3.errors import cli_entry  # noqa: E402

OFF_TARGET_XY = 0.015  # m: "closed off target" beyond this hand-object xy distance
LIFTED = 0.005  # m: the object rose at least this much
SETTLE_STEPS = 5  # the object's rise is measured from this step on (it settles onto the table first)


def object_position(env) -> np.ndarray:
    """The grasped object's position in the tasks we generate data for (lift: cube, pick_place: the can)."""
    if hasattr(env, "cube_body_id"):
        body = env.cube_body_id
    elif hasattr(env, "obj_body_id"):
        body = env.obj_body_id[env.obj_to_use]
    elif hasattr(env, "cubeA_body_id"):
        body = env.cubeA_body_id
    else:
        raise SystemExit(f"error: --checkpoint: env {type(env).__name__} has no object this script knows")
    return np.array(env.sim.data.body_xpos[body], dtype=np.float64)


def classify(success: bool, closed_at: Optional[np.ndarray], rise: float) -> str:
    """The failure class of one episode (see the module docstring)."""
    if success:
        return "success"
    if closed_at is None:
        return "never closed"
    if np.linalg.norm(closed_at[:2]) > OFF_TARGET_XY:
        return "closed off target"
    return "closed, not lifted" if rise < LIFTED else "lifted, no success"


def trace_episode(env, policy, pack, seed: int, horizon: int, gripper_dim: int = -1) -> dict:
    """Run one deterministic episode from ``seed``; the per-step trace and the episode's summary."""
    from visual_dr3.envs.make import reset_env

    obs = reset_env(env, seed)
    robot = env.robots[0]
    rows, closed_at, success = [], None, False
    for t in range(horizon):
        action = policy({k: v[None] for k, v in pack(obs).items()}, [0])[0]
        hand = np.array(env.sim.data.site_xpos[robot.eef_site_id["right"]], dtype=np.float64)
        obj = object_position(env)
        fingers = env.sim.data.qpos[robot._ref_gripper_joint_pos_indexes["right"]]
        offset = hand - obj
        if closed_at is None and action[gripper_dim] > 0:
            closed_at = offset
        rows.append((t, *offset, obj[2], float(fingers[0] - fingers[1]), *action[[0, 1, 2, gripper_dim]]))
        obs, _, _, _ = env.step(np.asarray(action, dtype=np.float64))
        if env._check_success():
            success = True
            break
    rows_arr = np.array(rows)
    settled = rows_arr[min(SETTLE_STEPS, len(rows_arr) - 1):, 4]  # objects drop ~1 cm onto the table at reset
    rise = float(settled.max() - settled.min())
    return {"seed": seed, "success": success, "length": len(rows), "closed_at": closed_at,
            "first_close": None if closed_at is None else int(np.argmax(rows_arr[:, 9] > 0)),
            "rise": rise, "min_xy": float(np.linalg.norm(rows_arr[:, 1:3], axis=1).min()),
            "class": classify(success, closed_at, rise), "rows": rows_arr}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.grasp_trace", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="a train.py checkpoint (.ckpt)")
    p.add_argument("--episodes", type=int, default=8, help="episodes to trace (default 8)")
    p.add_argument("--seed", type=int, default=1000,
                   help="episode seeds are episode_seed(seed, i) (default 1000: not a training run's seed)")
    p.add_argument("--horizon", type=int, default=None, help="episode limit (default: the checkpoint env's)")
    p.add_argument("--steps", action="store_true", help="print every step of each failed episode")
    p.add_argument("--weights", choices=["auto", "trained", "ema"], default="auto",
                   help="act with the trained weights or their moving average (default auto: the average if any)")
    return p


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.episodes < 1:
        raise SystemExit(f"error: --episodes {args.episodes}: expected a positive integer")
    import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
    from visual_dr3.checkpoint import load_policy, resolve_env_args
    from visual_dr3.envs.make import make_env_from_args
    from visual_dr3.errors import UserError
    from visual_dr3.evaluation.rollout import TorchPolicy, WorkerSpec, _pack_obs
    from visual_dr3.evaluation.stats import env_seed_for, episode_seed

    # a UserError (a missing, corrupt, unsafe or foreign checkpoint) is one line and exit 2 (cli_entry)
    module, meta, _ = load_policy(args.checkpoint, "cpu")
    env_args, _ = resolve_env_args(meta)
    if args.weights == "ema" and module.ema_actor is None:
        raise UserError(f"--weights ema: {args.checkpoint} holds no moving average")
    module.act_with_ema = args.weights != "trained" and module.ema_actor is not None
    spec = WorkerSpec(env_args=env_args, image_keys=tuple(meta["image_keys"]), proprio_keys=tuple(meta["proprio_keys"]))
    policy = TorchPolicy(module, spec.image_keys, deterministic=True)
    run_seed = int((meta.get("config") or {}).get("seed", 0))
    env = make_env_from_args(env_args, seed=env_seed_for(run_seed))
    horizon = int(args.horizon or env.horizon)
    counts: collections.Counter = collections.Counter()
    results = []
    try:
        for i in range(args.episodes):
            r = trace_episode(env, policy, lambda o: _pack_obs(o, spec), episode_seed(args.seed, i), horizon)
            counts[r["class"]] += 1
            results.append(r)
            close = ("never" if r["closed_at"] is None else
                     f"step {r['first_close']:3d} at ({', '.join(f'{100 * v:+.1f}' for v in r['closed_at'])}) cm")
            print(f"episode {i:3d} seed {r['seed']:10d}  {r['class']:19s} steps {r['length']:3d}  first close: "
                  f"{close}  object rise {100 * r['rise']:.1f} cm  closest xy {100 * r['min_xy']:.1f} cm", flush=True)
            if args.steps and not r["success"]:
                for row in r["rows"]:
                    print("    t=%3d hand-object (%+5.1f %+5.1f %+5.1f) cm  object z %.3f  fingers %.3f  "
                          "action (%+.2f %+.2f %+.2f | gripper %+.2f)" % (row[0], *(100 * row[1:4]), *row[4:]))
    finally:
        env.close()
    print("summary: " + ", ".join(f"{k} {v}/{args.episodes}" for k, v in counts.most_common()), flush=True)
    return {"counts": dict(counts), "episodes": results}


if __name__ == "__main__":
    main()
