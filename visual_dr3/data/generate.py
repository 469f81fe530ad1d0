"""Generate a dataset with the scripted noisy policies: ``python -m visual_dr3.data.generate``.

    python -m visual_dr3.data.generate --task lift --episodes 20 --kind mixed --out data/lift_mixed.hdf5

Kinds:

- ``expert``: position noise sigma 0.1, mostly successful.
- ``mixed``: sigma cycles over the task's ``mixed_sigmas`` (episode i uses level i % 4), so that
  successes and failures mix (lift: roughly half succeed).
- ``cog``: COG's prior/task split. Even episodes are ``prior`` (reach and grasp, never complete the
  task, rewards all 0), odd ones ``task`` (the scripted grasp runs unrecorded; recording starts at the
  grasped state and runs to success or the horizon). sigma cycles over 0.1, 0.3, 0.6 per pair.
  Masks ``mask/prior`` and ``mask/task``.
- ``stitch`` (lift only): data in which no trajectory shows the task, so copying it cannot succeed. Episode
  i % 4 == 0 ``release`` (grasp the cube, open the fingers again, retreat up), 1 and 2 ``decoy0``/``decoy1``
  (the same grasp on an empty spot beside the cube, both on one side), 3 ``task`` (as cog's: the grasp runs
  unrecorded, recording starts at the grasped cube and lifts it to success). No episode runs from an initial
  state to success; from the initial states the behaviour splits three ways (the average heads off the cube);
  the grasp that leads to success is only ever followed, in its own episode, by letting go. One step of policy
  improvement on the behaviour's values sees no reward behind the grasp; values carried back through the
  task episodes' lift (TD backups) do. Masks ``prior`` (release and decoys), ``task``, ``release``, ``decoy``;
  the file's ``visual_dr3`` metadata holds ``stitch`` (the share of each mode, where task episodes start, the
  count of episodes from an initial state to success: 0). sigma cycles over 0.1, 0.3, 0.6 per group of four.

An episode stops at success (that last step has reward 1 and done 1) or at the horizon (done 0);
prior episodes stop when the prior behaviour is complete (done 0). A prior episode that reaches
success anyway, or a task episode that never reaches the grasp, is re-run with the next attempt seed.

Determinism: episode i's env reset seed and policy noise come from ``SeedSequence([seed, i, attempt])``
and every worker builds its env with the same construction seed, so the datasets' contents are the
same for any ``--workers``. Episodes run in K spawned worker processes (one env and EGL context each)
and are written in episode order as they arrive.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
from visual_dr3.data.generate_workers import (WORKER, close_worker_env, init_worker, model_file_for, worker_episode,
                                             worker_pool)
from visual_dr3.envs.scripted import PRIOR_MODES, SCRIPTED_VERSION
from visual_dr3.envs.tasks import KINDS, TASKS, TaskSpec, get_task
from visual_dr3.errors import (OneLineParser, UserError, cli_entry, command_name, polled, raise_if_ctrl_c,
                               remembered_ctrl_c)

EXPERT_SIGMA = 0.1
COG_SIGMAS = (0.1, 0.3, 0.6)
#: the roles of the ``stitch`` kind, episode i taking STITCH_ROLES[i % 4]
STITCH_ROLES = ("release", "decoy0", "decoy1", "task")
MAX_ATTEMPTS = 5
VALID_FRACTION = 0.1


# --------------------------------------------------------------------------------------------------
# one episode
# --------------------------------------------------------------------------------------------------
def episode_plan(spec: TaskSpec, kind: str, index: int) -> tuple[str, float]:
    """(role, sigma) of episode ``index``: role is ``full``, ``task`` or a prior mode (``prior``; stitch:
    ``release``, ``decoy0``, ``decoy1``)."""
    if kind == "expert":
        return "full", EXPERT_SIGMA
    if kind == "mixed":
        return "full", float(spec.mixed_sigmas[index % len(spec.mixed_sigmas)])
    if kind == "cog":
        return ("prior" if index % 2 == 0 else "task"), float(COG_SIGMAS[(index // 2) % len(COG_SIGMAS)])
    if kind == "stitch":
        if (spec.scripted_policy or spec.name) != "lift":
            raise UserError(f"--kind stitch: built for --task lift only (got {spec.name!r})")
        return STITCH_ROLES[index % 4], float(COG_SIGMAS[(index // 4) % len(COG_SIGMAS)])
    raise UserError(f"--kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def episode_seeds(seed: int, index: int, attempt: int = 0) -> tuple[int, int]:
    """(env reset seed, policy noise seed) of an episode, from (dataset seed, episode index, attempt)."""
    words = np.random.SeedSequence([int(seed), int(index), int(attempt)]).generate_state(2, dtype=np.uint64)
    return int(words[0] >> np.uint64(1)), int(words[1] >> np.uint64(1))


def run_episode(env, spec: TaskSpec, kind: str, seed: int, index: int, horizon: int | None = None) -> dict:
    """Run episode ``index`` in ``env`` (built by :func:`visual_dr3.envs.make.make_env`); returns its arrays."""
    from visual_dr3.envs.make import reset_env, sim_state
    from visual_dr3.envs.scripted import make_policy

    role, sigma = episode_plan(spec, kind, index)
    horizon = int(horizon or spec.horizon)
    image_keys, proprio_keys = spec.image_keys, spec.proprio_keys
    env_steps = 0
    for attempt in range(MAX_ATTEMPTS):
        env_seed, policy_seed = episode_seeds(seed, index, attempt)
        obs = reset_env(env, env_seed)
        policy = make_policy(spec, env, sigma=sigma, rng=np.random.default_rng(policy_seed),
                             mode="task" if role == "task" else role)
        recording = role != "task"
        rec: dict[str, list] = {"actions": [], "rewards": [], "dones": [], "states": []}
        rec_obs: dict[str, list] = {k: [] for k in (*image_keys, *proprio_keys)}
        success = prior_hit_success = False
        prior = role in PRIOR_MODES
        start_step = 0
        for _ in range(horizon):
            action = policy(obs)
            if not recording and policy.grasped:
                recording = True  # task demos start at the grasped state, with the first post-grasp action
                start_step = env_steps
            if recording:
                for k in rec_obs:
                    rec_obs[k].append(np.array(obs[k]))
                rec["states"].append(sim_state(env))
                rec["actions"].append(action)
            obs, _, _, _ = env.step(action)
            env_steps += 1
            raise_if_ctrl_c()  # with --workers 1 the episode runs here: stop within a step, not at its end
            success = bool(env._check_success())
            if prior and success:
                prior_hit_success = True
                break
            if recording:
                rec["rewards"].append(1.0 if success else 0.0)
                rec["dones"].append(1 if success else 0)
            if success or (prior and policy.finished):
                break
        n = len(rec["actions"])
        if prior_hit_success:
            if attempt + 1 < MAX_ATTEMPTS:
                continue
            # last resort: keep the steps before the success (all rewards 0)
            n = len(rec["rewards"])
            success = False
            for k in rec:
                rec[k] = rec[k][:n]
            for k in rec_obs:
                rec_obs[k] = rec_obs[k][:n]
        if n == 0 and attempt + 1 < MAX_ATTEMPTS:
            continue  # task episode that never reached the grasp (or succeeded before it)
        break
    if n == 0:
        # only a horizon too short for the scripted policy gets here (a task demo starts at the grasp)
        raise UserError(f"--horizon {horizon}: {kind} episode {index} ({role}) recorded no step in {MAX_ATTEMPTS} "
                        f"attempts (the scripted policy did not reach the grasp in {horizon} steps); expected a "
                        f"longer --horizon (the {spec.name} default is {spec.horizon})")
    return {
        "index": index,
        "role": role,
        "sigma": sigma,
        "success": bool(success),
        "seed": env_seed,
        "attempt": attempt,
        "env_steps": env_steps,
        "start_step": start_step,
        "actions": np.stack(rec["actions"]).astype(np.float32),
        "rewards": np.asarray(rec["rewards"], dtype=np.float32),
        "dones": np.asarray(rec["dones"], dtype=np.int64),
        "states": np.stack(rec["states"]),
        "obs": {
            k: (np.stack(v).astype(np.uint8) if k in image_keys else np.stack(v).astype(np.float64))
            for k, v in rec_obs.items()
        },
    }


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def split_masks(n: int, seed: int, valid_fraction: float = VALID_FRACTION) -> tuple[list[int], list[int]]:
    """(train, valid) demo indices: ~10% valid, at least one of each when n >= 2; fixed by ``seed``."""
    if n < 2:
        return list(range(n)), []
    n_valid = min(n - 1, max(1, int(round(n * valid_fraction))))
    valid = set(np.random.default_rng([int(seed), 7919]).permutation(n)[:n_valid].tolist())
    return [i for i in range(n) if i not in valid], sorted(valid)


def _check_args(task, episodes, kind, image_size, workers, seed, horizon) -> TaskSpec:
    spec = get_task(task)
    if kind not in KINDS:
        raise UserError(f"--kind: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    for flag, value, low in (("--episodes", episodes, 1), ("--image-size", image_size, 8),
                             ("--workers", workers, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{flag}: got {value!r}; expected an integer >= {low}")
    if horizon is not None and (not isinstance(horizon, (int, np.integer)) or horizon < 1):
        raise UserError(f"--horizon: got {horizon!r}; expected an integer >= 1")
    return spec


def made_by_older_script(path: "str | os.PathLike") -> bool:
    """True when ``path`` was generated by an older version of our scripted policies: a default dataset is
    then generated again (the presets' recipes were measured on the current version). False for datasets
    from elsewhere (robomimic's) and for files that cannot be read (their loader says why)."""
    from visual_dr3.data.hdf5_writer import read_meta

    try:
        meta = read_meta(path)
    except Exception:
        return False
    return meta.get("generator") == "scripted" and int(meta.get("scripted_version", 1)) < SCRIPTED_VERSION


def generate_dataset(task: str, episodes: int, out: "str | os.PathLike", kind: str = "mixed",
                     image_size: int = 84, workers: int = 1, seed: int = 0, progress: bool = True,
                     horizon: int | None = None, cameras=None) -> dict:
    """Generate ``episodes`` scripted episodes of ``task`` into ``out`` (robomimic layout, atomic write).

    ``horizon`` overrides the task's episode limit (tests use short ones). Returns the summary dict:
    task, kind, episodes, transitions, successes, success_rate, file_size (bytes), seconds, env_steps,
    env_steps_per_s, path, workers, image_size, seed.
    """
    from tqdm import tqdm

    from visual_dr3.data.hdf5_writer import DatasetWriter, check_writable

    spec = _check_args(task, episodes, kind, image_size, workers, seed, horizon)
    out_path = check_writable(out)
    horizon = int(horizon or spec.horizon)
    cams = tuple(spec.cameras if cameras is None else cameras)
    if tuple(cams) != spec.cameras:
        import dataclasses

        spec = dataclasses.replace(spec, cameras=cams)
    workers = min(int(workers), int(episodes))
    t0 = time.time()

    from visual_dr3.envs.make import env_args_for, render_settings

    env_args = env_args_for(spec, image_size, cams, horizon, seed=seed)
    meta = {
        "task": spec.name, "kind": kind, "image_size": int(image_size), "cameras": list(cams),
        "proprio_keys": list(spec.proprio_keys), "seed": int(seed), "render": render_settings(),
        "episodes": int(episodes), "horizon": horizon, "generator": "scripted",
        "scripted_version": SCRIPTED_VERSION,
    }
    init_args = (spec.name, int(image_size), cams, horizon, int(seed), kind)

    model_file = ""
    bar = tqdm(total=int(episodes), unit="ep", desc=f"{spec.name}/{kind}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    pool = None
    try:
        # Ctrl-C is raised at the next env step (--workers 1), episode (raise_if_ctrl_c) or wait for the workers
        # (polled): never inside a library's code
        with remembered_ctrl_c(), DatasetWriter(out_path, env_args, meta) as writer:
            if workers == 1:
                init_worker(*init_args)
                results = (worker_episode(i) for i in range(episodes))
                from visual_dr3.envs.make import model_xml

                model_file = model_xml(WORKER["env"])
            else:
                # built before the workers start (one env build, in the parent, for the file's MJCF)
                model_file = model_file_for(spec, image_size, cams, horizon, seed)
                pool = worker_pool(workers, init_args)
                results = polled(pool.imap(worker_episode, range(episodes), chunksize=1))
            tally = _write_episodes(writer, results, model_file, kind, int(episodes), int(seed), bar)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if workers == 1:
            close_worker_env()
    seconds = time.time() - t0
    successes, transitions, env_steps = tally["successes"], tally["transitions"], tally["env_steps"]
    summary = {
        "task": spec.name, "kind": kind, "episodes": int(episodes), "transitions": transitions,
        "successes": successes, "success_rate": successes / episodes,
        "file_size": out_path.stat().st_size, "seconds": seconds, "env_steps": env_steps,
        "env_steps_per_s": env_steps / seconds if seconds > 0 else 0.0, "path": str(out_path),
        "workers": workers, "image_size": int(image_size), "seed": int(seed),
    }
    if kind in ("cog", "stitch"):
        for role, (n, s) in tally["role_counts"].items():
            summary[f"{role}_episodes"] = n
            summary[f"{role}_success_rate"] = s / n
    if kind == "stitch":
        summary["stitch"] = tally["stitch"]
    return summary


def _write_episodes(writer, results, model_file: str, kind: str, episodes: int, seed: int, bar) -> dict:
    """Add each episode of ``results`` to ``writer`` as a demo, then the masks (train/valid; cog: prior/task)
    and the tallies in the file's metadata. Returns the tallies (successes, transitions, env_steps,
    role_counts: role -> [episodes, successes])."""
    successes = transitions = env_steps = 0
    role_counts: dict[str, list[int]] = {}
    roles: list[str] = []
    starts: list[int] = []  # task episodes: env steps run unrecorded before the grasp
    from_initial_to_success = 0
    for ep in results:
        raise_if_ctrl_c()
        writer.add_demo(
            ep["actions"], ep["rewards"], ep["dones"], ep["states"], ep["obs"], model_file=model_file,
            attrs={"success": int(ep["success"]), "sigma": ep["sigma"], "role": ep["role"],
                   "seed": ep["seed"], "attempt": ep["attempt"], "start_step": ep["start_step"]},
        )
        roles.append(ep["role"])
        if ep["role"] == "task":
            starts.append(int(ep["start_step"]))
        elif ep["success"]:
            from_initial_to_success += 1
        rc = role_counts.setdefault(ep["role"], [0, 0])
        rc[0] += 1
        rc[1] += int(ep["success"])
        successes += int(ep["success"])
        transitions += len(ep["actions"])
        env_steps += ep["env_steps"]
        bar.set_postfix(transitions=transitions, success=f"{successes}/{bar.n + 1}", refresh=False)
        bar.update(1)
    raise_if_ctrl_c()
    train, valid = split_masks(episodes, seed)
    writer.set_mask("train", [f"demo_{i}" for i in train])
    writer.set_mask("valid", [f"demo_{i}" for i in valid])
    if kind == "cog":
        for role in ("prior", "task"):
            writer.set_mask(role, [f"demo_{i}" for i, r in enumerate(roles) if r == role])
    stitch = None
    if kind == "stitch":
        groups = {"prior": set(PRIOR_MODES), "task": {"task"}, "release": {"release"}, "decoy": {"decoy0", "decoy1"}}
        for name, members in groups.items():
            writer.set_mask(name, [f"demo_{i}" for i, r in enumerate(roles) if r in members])
        stitch = {
            "modes": {r: roles.count(r) for r in STITCH_ROLES},
            "mode_share": {r: roles.count(r) / len(roles) for r in STITCH_ROLES},
            "task_start": "cube grasped: the scripted reach and grasp ran unrecorded, recording starts with the "
                          "first action after the fingers closed on the cube",
            "task_start_steps": ([int(min(starts)), float(np.mean(starts)), int(max(starts))] if starts else None),
            "episodes_from_initial_state_to_success": from_initial_to_success,
        }
        writer.meta["stitch"] = stitch
    writer.meta["successes"] = successes
    writer.meta["success_rate"] = successes / episodes
    writer.meta["transitions"] = transitions
    return {"successes": successes, "transitions": transitions, "env_steps": env_steps, "role_counts": role_counts,
            "stitch": stitch}


def format_summary(s: dict) -> str:
    mb = s["file_size"] / 1e6
    lines = [
        f"task {s['task']}  kind {s['kind']}  episodes {s['episodes']}  transitions {s['transitions']}",
        f"success rate {s['success_rate']:.1%} ({s['successes']}/{s['episodes']})",
        f"file {s['path']}  {mb:.1f} MB",
        f"time {s['seconds']:.1f} s  env steps {s['env_steps']}  ({s['env_steps_per_s']:.1f} steps/s, "
        f"{s['workers']} worker{'s' if s['workers'] > 1 else ''})",
    ]
    if s["kind"] == "cog":
        lines.insert(2, "  ".join(f"{r}: {s.get(f'{r}_episodes', 0)} episodes, "
                                  f"{s.get(f'{r}_success_rate', 0.0):.1%} success" for r in ("prior", "task")))
    if s["kind"] == "stitch":
        st = s["stitch"]
        lines.insert(2, "modes: " + ", ".join(f"{r} {n} ({st['mode_share'][r]:.0%})" for r, n in st["modes"].items()))
        span = st["task_start_steps"]
        lines.insert(3, "task episodes start at the grasped cube" + (
            f" (after {span[0]}-{span[2]} unrecorded steps, mean {span[1]:.1f})" if span else "")
            + f"; episodes from an initial state to success: {st['episodes_from_initial_state_to_success']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=command_name("python -m visual_dr3.data.generate"),
                description="Generate a robosuite dataset (robomimic HDF5 layout) with scripted noisy policies.")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes (demos)")
    p.add_argument("--out", required=True, help="output .hdf5 path (written atomically)")
    p.add_argument("--kind", default="mixed", help=f"one of: {', '.join(KINDS)} (default mixed)")
    p.add_argument("--image-size", type=int, default=84, help="square camera images (default 84)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one env each (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--horizon", type=int, default=None, help="episode limit (default: the task's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_entry
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    summary = generate_dataset(task=args.task, episodes=args.episodes, out=args.out, kind=args.kind,
                               image_size=args.image_size, workers=args.workers, seed=args.seed,
                               progress=not args.no_progress, horizon=args.horizon)
    print(format_summary(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
