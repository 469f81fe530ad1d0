"""Evaluation throughput: env steps/s of the rollout pool with 1, 2, ... workers and batched inference.

    python benchmarks/eval_speed.py                                   # lift, 84x84 x2 cameras, horizon 100
    python benchmarks/eval_speed.py --workers 1 2 4 --episodes 8 --device cuda

The policy is a randomly initialised DR3CQL at the default config (drq encoder, feature_dim 256), sampled
actions (episodes rarely succeed, so they run the full horizon). For each worker count, a fresh pool runs
the episodes; printed: env steps/s overall (worker start-up included), after start-up (from the first
worker ready), start-up seconds, and the policy's share of the wall time (one batched call per step).
"""

from __future__ import annotations

import argparse
import os
import time

import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)


class TimedPolicy:
    def __init__(self, inner):
        self.inner, self.seconds, self.calls, self.rows = inner, 0.0, 0, 0

    def start_episode(self, episode, seed):
        self.inner.start_episode(episode, seed)

    def end_episode(self, episode):
        self.inner.end_episode(episode)

    def __call__(self, obs, episodes):
        t = time.perf_counter()
        a = self.inner(obs, episodes)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        self.rows += len(episodes)
        return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="lift")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the parent (policy)")
    args = ap.parse_args()

    import torch

    from visual_dr3.envs.make import env_args_for
    from visual_dr3.envs.tasks import get_task
    from visual_dr3.evaluation.rollout import RolloutPool, TorchPolicy
    from visual_dr3.evaluation.stats import env_seed_for, summarize
    from visual_dr3.learner.config import TrainConfig, to_dict
    from visual_dr3.learner.module import DR3CQL

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = get_task(args.task)
    env_args = env_args_for(task, args.image_size)
    module = DR3CQL(to_dict(TrainConfig(task=task.name)), list(task.image_keys), list(task.proprio_keys), 9,
                    args.image_size, task.action_dim, env_args=env_args).to(args.device).eval()
    print(f"task {task.name}, {len(task.cameras)} cameras {args.image_size}x{args.image_size}, horizon "
          f"{args.horizon}, {args.episodes} episodes, policy on {args.device} ({args.threads} thread(s)), "
          f"{os.cpu_count()} CPUs")
    for workers in args.workers:
        policy = TimedPolicy(TorchPolicy(module, task.image_keys, deterministic=False))
        t0 = time.perf_counter()
        with RolloutPool(env_args, task.image_keys, task.proprio_keys, workers=workers, horizon=args.horizon,
                         env_seed=env_seed_for(0), expect_image_size=args.image_size) as pool:
            run = pool.run(policy, args.episodes, seed=0)
        total = time.perf_counter() - t0
        s = summarize(run.records, run.seconds, run.rollout_seconds)
        print(f"workers {workers}: {s['env_steps']} env steps, {s['env_steps_per_s']:.1f} steps/s overall "
              f"({run.seconds:.1f} s), {s['rollout_steps_per_s']:.1f} steps/s after start-up "
              f"(start-up {run.seconds - run.rollout_seconds:.1f} s); policy {policy.seconds:.2f} s in "
              f"{policy.calls} batched calls ({1000 * policy.seconds / max(1, policy.calls):.1f} ms each, "
              f"{policy.rows / max(1, policy.calls):.2f} obs per call); pool closed after {total:.1f} s; "
              f"success {s['successes']}/{s['episodes']}")


if __name__ == "__main__":
    main()
