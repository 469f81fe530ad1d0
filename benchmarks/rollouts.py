"""Case 5: evaluation env steps/s (two cameras, a policy in the loop), each figure with where its time went.

Ours: :class:`visual_dr3.evaluation.rollout.RolloutPool` (spawned workers, our render settings,
``hard_reset=False``), with the policy in the parent (batched calls acting on whatever observations are in)
with 1 and 2 envs per worker, 1 worker and one per core, and with the policy in the workers (a CPU copy
each, one env per worker; the default when the workers take every core), 1 worker and one per core. Two baselines, both one process stepping one env with the
policy called once per step, as a plain rollout loop (robomimic's ``run_rollout``) does:

- plain: ``robosuite.make`` with the same task, cameras, image size, controller and horizon and everything
  else robosuite's default (reflections and offscreen multisampling on, ``hard_reset=True``);
- like-for-like: the same loop on an env built as ours is (our render settings, ``hard_reset=False``), so the
  ratio to it is what the pool itself adds.

The policy is the same randomly initialised ``DR3CQL`` (sampled actions, so episodes run to the horizon) on
1 torch thread everywhere. Each figure's note breaks a step down: time in ``env.step`` without rendering
(physics, controller, observables), in rendering (``sim.render``), the policy per call, and the share of the
workers' time spent waiting (for an action, or in the pipe). The pool's first run (worker start-up) and the
loops' first episodes are the warm-up; each repetition is a run of ``episodes`` episodes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.common import Row, Timing, ratio_row, target_row, timing_row


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


@dataclass
class Breakdown:
    """Summed over the timed repetitions: env steps, wall seconds, and the parts of :class:`RunTiming`."""

    steps: int = 0
    wall: float = 0.0
    env: float = 0.0
    render: float = 0.0
    policy: float = 0.0
    calls: int = 0
    processes: int = 1  # processes stepping envs (their time is env + render + waiting)
    local: bool = False  # the policy runs in those processes (its time is theirs, not waiting)

    def add(self, steps: int, wall: float, t) -> None:
        self.steps += steps
        self.wall += wall
        self.env += t.env_seconds
        self.render += t.render_seconds
        self.policy += t.policy_seconds
        self.calls += t.calls

    def note(self) -> str:
        """``sim 30.1 + render 25.3 ms/step; policy 9.1 ms/call, 1.98 obs/call; envs' processes wait 12%``."""
        n = max(self.steps, 1)
        busy = self.env + self.render + (self.policy if self.local else 0.0)
        waiting = 1.0 - busy / max(self.wall * self.processes, 1e-9)
        return (f"per env step: sim {1e3 * self.env / n:.1f} + render {1e3 * self.render / n:.1f} ms; policy "
                f"{1e3 * self.policy / max(self.calls, 1):.1f} ms/call, {self.steps / max(self.calls, 1):.2f} "
                f"obs/call; env processes waiting {100 * max(waiting, 0.0):.0f}% of their time")


def pool_rate(task, env_args, policy, workers: int, envs: int, s, local: bool = False) -> tuple[Timing, Breakdown]:
    """``local``: the policy in the workers (a CPU copy each, one env per worker)."""
    from visual_dr3.evaluation.rollout import RolloutPool
    from visual_dr3.evaluation.stats import env_seed_for

    rates, parts = [], Breakdown(processes=workers, local=local)
    with RolloutPool(env_args, task.image_keys, task.proprio_keys, workers=workers, horizon=s.eval_horizon,
                     env_seed=env_seed_for(0), expect_image_size=s.eval_image_size,
                     envs_per_worker=envs, policy_in_workers=local) as pool:
        for r in range(1 + s.eval_reps):  # run 0 includes start-up: warm-up
            run = pool.run(policy, s.eval_episodes, seed=r)
            steps = sum(int(x["length"]) for x in run.records)
            if r:
                rates.append(steps / run.seconds)
                parts.add(steps, run.seconds, run.timing)
    return Timing(rates), parts


def serial_rate(task, policy, env, s) -> tuple[Timing, Breakdown]:
    """Episodes stepped one after the other in ``env`` (one process), the policy called once per step."""
    from visual_dr3.data.replay import PROPRIO_KEY
    from visual_dr3.evaluation.records import RunTiming
    from visual_dr3.evaluation.workers import _RenderClock

    clock = _RenderClock(env)

    def episodes(r: int) -> tuple[int, float, RunTiming]:
        t = RunTiming()
        t0 = time.perf_counter()
        steps = 0
        for e in range(s.eval_episodes):
            policy.start_episode(e, 1000 * r + e)
            obs = env.reset()
            clock.attach(env)  # robosuite's hard reset builds a new sim
            for _ in range(s.eval_horizon):
                batch = {k: np.ascontiguousarray(obs[k][None]) for k in task.image_keys}
                batch[PROPRIO_KEY] = np.concatenate(
                    [np.asarray(obs[k], np.float32).reshape(-1) for k in task.proprio_keys])[None]
                tp = time.perf_counter()
                action = policy(batch, [e])[0].astype(np.float64)
                t.policy_seconds += time.perf_counter() - tp
                t.calls += 1
                t.rows += 1
                r0, te = clock.seconds, time.perf_counter()
                obs, _, done, _ = env.step(action)
                render = clock.seconds - r0
                t.render_seconds += render
                t.env_seconds += time.perf_counter() - te - render
                steps += 1
                if env._check_success() or done:
                    break
            policy.end_episode(e)
        return steps, time.perf_counter() - t0, t

    try:
        episodes(0)  # warm-up
        rates, parts = [], Breakdown()
        for r in range(s.eval_reps):
            steps, wall, t = episodes(r + 1)
            rates.append(steps / wall)
            parts.add(steps, wall, t)
        return Timing(rates), parts
    finally:
        env.close()


def plain_env(env_args, s):
    """robosuite's defaults: reflections and multisampling on, a model rebuild at every reset."""
    import robosuite

    kw = dict(env_args["env_kwargs"])
    kw.pop("hard_reset", None)  # robosuite's default (True)
    kw.pop("seed", None)
    kw["horizon"] = s.eval_horizon
    return robosuite.make(env_args["env_name"], **kw)


def our_env(env_args, s):
    """The env a rollout worker builds (our render settings, no model rebuild at reset)."""
    from visual_dr3.envs.make import make_env_from_args
    from visual_dr3.evaluation.stats import env_seed_for

    return make_env_from_args(env_args, seed=env_seed_for(0), horizon=s.eval_horizon)


def rollouts(s) -> list[Row]:
    """The rows at ``s.eval_image_size``, then at each of ``s.eval_more_sizes``."""
    rows = []
    for size in [s.eval_image_size, *s.eval_more_sizes]:
        rows += rollouts_at(dataclasses.replace(s, eval_image_size=size))
    return rows


def rollouts_at(s) -> list[Row]:
    from visual_dr3.envs.tasks import get_task

    task = get_task("lift")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    try:
        env_args, policy = _policy(task, s.eval_image_size)
        plain, plain_parts = serial_rate(task, policy, plain_env(env_args, s), s)
        like, like_parts = serial_rate(task, policy, our_env(env_args, s), s)
        one1, one1_parts = pool_rate(task, env_args, policy, 1, 1, s)
        one2, one2_parts = pool_rate(task, env_args, policy, 1, 2, s)
        all2, all2_parts = pool_rate(task, env_args, policy, cores, 2, s) if cores > 1 else (one2, one2_parts)
        loc1, loc1_parts = pool_rate(task, env_args, policy, 1, 1, s, local=True)
        locn, locn_parts = pool_rate(task, env_args, policy, cores, 1, s, local=True) if cores > 1 else (loc1, loc1_parts)
    finally:
        torch.set_num_threads(threads)
    px = f"{s.eval_image_size}px"
    tag = (f"lift, 2 cams {s.eval_image_size}x{s.eval_image_size}, horizon {s.eval_horizon}, "
           f"{s.eval_episodes} episodes per rep")
    scaling = Timing([a / (cores * b) for a, b in zip(all2.samples, one2.samples)])
    local_scaling = Timing([a / (cores * b) for a, b in zip(locn.samples, loc1.samples)])
    return [
        timing_row("rollouts", f"plain robosuite env (defaults), serial, policy per step ({tag})", plain, "steps/s",
                   note=plain_parts.note()),
        timing_row("rollouts", f"{px} like-for-like loop: env built as ours (our render settings), serial, same "
                   "policy", like, "steps/s", note=like_parts.note()),
        timing_row("rollouts", f"{px} ours, 1 worker, 1 env", one1, "steps/s", note=one1_parts.note()),
        timing_row("rollouts", f"{px} ours, 1 worker, 2 envs (the default)", one2, "steps/s", note=one2_parts.note()),
        timing_row("rollouts", f"{px} ours, {cores} workers (one per core), 2 envs each", all2, "steps/s",
                   note=all2_parts.note()),
        timing_row("rollouts", f"{px} ours, policy in the worker, 1 worker", loc1, "steps/s", note=loc1_parts.note()),
        timing_row("rollouts", f"{px} ours, policy in the workers, {cores} workers (the default when the workers "
                   "take every core)", locn, "steps/s", note=locn_parts.note()),
        ratio_row("rollouts", f"{px} per worker: ours 1 worker (2 envs) / plain env", one2, plain, target=3.0,
                  note="both one process stepping envs; ours: the policy in a second process (the default for 1 "
                       "worker on 2 cores)"),
        ratio_row("rollouts", f"{px} per worker, policy in the worker: ours / plain env", loc1, plain,
                  note="both one process doing everything: step, render, policy"),
        ratio_row("rollouts", f"{px} ours {cores} workers (default: policy in the workers) / like-for-like serial "
                  "loop", locn, like, target=1.5,
                  note=f"what the pool gives over a loop on the same env: {cores} worker processes vs 1"),
        ratio_row("rollouts", f"{px} {cores} workers: policy in the workers / in the parent ({cores} x 2 envs)", locn,
                  all2, note="the parent's batched calls take CPU from the workers when they fill the cores"),
        ratio_row("rollouts", f"{px} 2 envs per worker / 1 env (1 worker)", one2, one1,
                  note="the policy call overlapping the other env's step"),
        target_row("rollouts", f"{px} worker scaling, policy in the workers: {cores} workers / ({cores} x 1 worker)",
                   local_scaling, 0.9, note="near-linear = 1.0; each worker steps, renders and acts"),
        timing_row("rollouts", f"{px} scaling, policy in the parent: {cores} workers / ({cores} x 1 worker), 2 envs "
                   "each", scaling, "x", note="1 worker has a core of its own for the parent's calls; "
                   f"{cores} workers share the cores with it"),
    ]
