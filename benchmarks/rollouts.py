"""Case 5: evaluation env steps/s (two cameras, a policy in the loop) with 1 worker and with one per core,
against a plain robosuite env with robosuite's default settings stepped serially with the same policy.

Ours: :class:`visual_dr3.evaluation.rollout.RolloutPool` (one env per spawned worker, our render settings,
``hard_reset=False``, batched policy calls in the parent). Baseline: ``robosuite.make`` with the same task,
cameras, image size, controller and horizon and everything else robosuite's default (reflections and
offscreen multisampling on, ``hard_reset=True``), in one process, the policy called once per step: how a
plain rollout loop (robomimic's ``run_rollout``) steps an env. The policy is the same randomly initialised
``DR3CQL`` (sampled actions, so episodes run to the horizon) on 1 torch thread in both. The pool's first run
(worker start-up) is the warm-up; each repetition is a run of ``episodes`` episodes.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from benchmarks.common import Row, Timing, ratio_row, timing_row


def _policy(task, image_size: int):
    from visual_dr3.envs.make import env_args_for
    from visual_dr3.evaluation.rollout import TorchPolicy
    from visual_dr3.learner.config import TrainConfig, to_dict
    from visual_dr3.learner.module import DR3CQL

    torch.manual_seed(0)
    env_args = env_args_for(task, image_size)
    module = DR3CQL(to_dict(TrainConfig(task=task.name)), list(task.image_keys), list(task.proprio_keys), 9,
                    image_size, task.action_dim, env_args=env_args).eval()
    return env_args, TorchPolicy(module, task.image_keys, deterministic=False)


def pool_rate(task, env_args, policy, workers: int, s) -> Timing:
    from visual_dr3.evaluation.rollout import RolloutPool
    from visual_dr3.evaluation.stats import env_seed_for

    rates = []
    with RolloutPool(env_args, task.image_keys, task.proprio_keys, workers=workers, horizon=s.eval_horizon,
                     env_seed=env_seed_for(0), expect_image_size=s.eval_image_size) as pool:
        for r in range(1 + s.eval_reps):  # run 0 includes start-up: warm-up
            run = pool.run(policy, s.eval_episodes, seed=r)
            steps = sum(int(x["length"]) for x in run.records)
            if r:
                rates.append(steps / run.seconds)
    return Timing(rates)


def plain_rate(task, env_args, policy, s) -> Timing:
    """Serial rollouts in a plain robosuite env (robosuite's defaults), the same policy per step."""
    import robosuite

    from visual_dr3.data.replay import PROPRIO_KEY

    kw = dict(env_args["env_kwargs"])
    kw.pop("hard_reset", None)  # robosuite's default (True)
    kw.pop("seed", None)
    kw["horizon"] = s.eval_horizon
    env = robosuite.make(env_args["env_name"], **kw)
    try:
        def episodes(r: int) -> float:
            t0 = time.perf_counter()
            steps = 0
            for e in range(s.eval_episodes):
                policy.start_episode(e, 1000 * r + e)
                obs = env.reset()
                for _ in range(s.eval_horizon):
                    batch = {k: np.ascontiguousarray(obs[k][None]) for k in task.image_keys}
                    batch[PROPRIO_KEY] = np.concatenate(
                        [np.asarray(obs[k], np.float32).reshape(-1) for k in task.proprio_keys])[None]
                    obs, _, done, _ = env.step(policy(batch, [e])[0].astype(np.float64))
                    steps += 1
                    if env._check_success() or done:
                        break
                policy.end_episode(e)
            return steps / (time.perf_counter() - t0)

        episodes(0)  # warm-up
        return Timing([episodes(r + 1) for r in range(s.eval_reps)])
    finally:
        env.close()


def rollouts(s) -> list[Row]:
    from visual_dr3.envs.tasks import get_task

    task = get_task("lift")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env_args, policy = _policy(task, s.eval_image_size)
        cores = os.cpu_count() or 1
        tag = (f"lift, 2 cams {s.eval_image_size}x{s.eval_image_size}, horizon {s.eval_horizon}, "
               f"{s.eval_episodes} episodes per rep")
        plain = plain_rate(task, env_args, policy, s)
        one = pool_rate(task, env_args, policy, 1, s)
        alln = pool_rate(task, env_args, policy, cores, s) if cores > 1 else one
    finally:
        torch.set_num_threads(threads)
    scaling = Timing([a / (cores * b) for a, b in zip(alln.samples, one.samples)])
    return [
        timing_row("rollouts", f"plain robosuite env (defaults), serial, policy per step ({tag})", plain, "steps/s"),
        timing_row("rollouts", "ours, 1 worker", one, "steps/s"),
        timing_row("rollouts", f"ours, {cores} workers (one per core)", alln, "steps/s"),
        ratio_row("rollouts", "per worker: ours 1 worker / plain env", one, plain, target=3.0),
        Row("rollouts", f"worker scaling: {cores} workers / ({cores} x 1 worker)", scaling.median, "x",
            scaling.spread, ">= 0.8", scaling.median >= 0.8, note="near-linear = 1.0", reps=len(scaling.samples)),
    ]
