"""The rollout pool: ``workers`` env processes (``envs_per_worker`` envs each) kept for many runs.

:class:`RolloutPool` starts the worker processes (:mod:`~visual_dr3.evaluation.workers`), checks the first
observation of every worker against what the policy expects, runs lists of episodes through
:mod:`~visual_dr3.evaluation.lockstep` (:meth:`RolloutPool.run`) and closes the workers. The design (lock
step, seeds, retries) is described in :mod:`visual_dr3.evaluation.rollout`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Callable, Collection, Optional, Sequence

import numpy as np

from visual_dr3.errors import UserError, say
from visual_dr3.evaluation.lockstep import _Run
from visual_dr3.evaluation.records import EpisodeResult, RolloutRun
from visual_dr3.evaluation.workers import DEAD, FaultSpec, WorkerSpec, _Worker

START_METHOD = "spawn"
#: envs per worker unless told otherwise (train.py's eval_envs_per_worker, eval.py's --envs-per-worker)
ENVS_PER_WORKER = 2


#: where the policy runs unless told otherwise (train.py's eval_policy_in, eval.py's --policy-in)
POLICY_IN = "auto"
POLICY_IN_CHOICES = ("auto", "parent", "workers")


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def policy_in_workers(choice: str, device, workers: int, cores: Optional[int] = None) -> bool:
    """Whether each worker should act with its own copy of the policy: ``choice`` ``"workers"`` / ``"parent"``,
    or ``"auto"``: in the workers when the policy runs on the CPU and the workers take every core (then a
    policy call in the parent takes CPU from the workers' simulation; with a core to spare, or on a GPU,
    the parent's batched calls overlap the workers' steps instead)."""
    if choice not in POLICY_IN_CHOICES:
        raise UserError(f"--policy-in: got {choice!r}; expected one of {', '.join(POLICY_IN_CHOICES)}")
    if choice != "auto":
        return choice == "workers"
    on_cpu = str(device).split(":")[0] == "cpu"
    return on_cpu and int(workers) >= (cores if cores is not None else usable_cores())


def envs_for(episodes: int, workers: int, envs_per_worker: int) -> int:
    """Envs per worker for a run of ``episodes`` on ``workers`` workers: at most ``envs_per_worker``, and no
    more than the episodes can keep busy (no env is built without an episode)."""
    return max(1, min(int(envs_per_worker), -(-int(episodes) // max(1, int(workers)))))


class RolloutPool:
    """``workers`` env processes; :meth:`run` evaluates a policy on a list of episode indices.

    ``env_args``: robomimic env_args (from the checkpoint); ``image_keys``/``proprio_keys``: what the policy
    reads (proprio = those keys concatenated in order, float32). ``horizon`` overrides the env's horizon.
    ``env_seed``: seed of env construction, the same in every worker (see :mod:`visual_dr3.evaluation.rollout`; use
    :func:`env_seed_for` of the run seed). ``expect_image_size``/``expect_proprio_dim``: checked against the
    first observation of every worker (a mismatch is a :class:`UserError`). ``faults``: the :class:`FaultSpec` test hook.
    ``envs_per_worker``: envs each worker process holds and steps in turn; with 2, a worker steps one env
    while the parent computes the other's action (the policy call and the simulator overlap).
    ``policy_in_workers``: each worker gets the policy once per run (``policy.for_workers()`` when it has
    one, pickled) and runs its episodes by itself, acting and stepping in turn (one env per worker: there is
    nothing to overlap); the parent only hands out episodes and collects the records (see
    :func:`policy_in_workers` for when this is faster). An episode's
    trajectory depends on its seed and the policy only, not on the number of workers or envs per worker.
    Use as a context manager (or call :meth:`close`); workers are daemonic, so they also die with the parent.
    """

    def __init__(self, env_args: dict, image_keys: Sequence[str], proprio_keys: Sequence[str], workers: int = 1,
                 horizon: Optional[int] = None, env_seed: int = 0, expect_image_size: Optional[int] = None,
                 expect_proprio_dim: Optional[int] = None, faults: Sequence[FaultSpec] = (),
                 step_timeout: float = 120.0, start_timeout: float = 600.0,
                 warn: Callable[[str], None] = say, envs_per_worker: int = ENVS_PER_WORKER,
                 policy_in_workers: bool = False):
        if int(workers) < 1:
            raise UserError(f"--workers: got {workers!r}; expected a positive integer")
        if int(envs_per_worker) < 1:
            raise UserError(f"--envs-per-worker: got {envs_per_worker!r}; expected a positive integer")
        self.spec = WorkerSpec(env_args=env_args, image_keys=tuple(image_keys), proprio_keys=tuple(proprio_keys),
                               horizon=int(horizon) if horizon else None, env_seed=int(env_seed),
                               faults=tuple(faults), envs=1 if policy_in_workers else int(envs_per_worker),
                               policy_in_workers=bool(policy_in_workers))
        self.num_workers = int(workers)
        self.envs_per_worker = self.spec.envs
        self.policy_in_workers = bool(policy_in_workers)
        self.expect_image_size = expect_image_size
        self.expect_proprio_dim = expect_proprio_dim
        self.step_timeout, self.start_timeout = float(step_timeout), float(start_timeout)
        self.warn = warn
        self.ctx = mp.get_context(START_METHOD)
        self.workers: list[_Worker] = []
        self.horizon: Optional[int] = None
        self._checked = False
        self._closed = False
        self._ran = False
        self.started_at = time.monotonic()
        self.workers = [_Worker(self.ctx, i, self.spec) for i in range(self.num_workers)]

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self.workers:
            if w.state != DEAD:
                try:
                    w.conn.send(("close",))
                except Exception:
                    pass
        deadline = time.monotonic() + 10
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.kill()

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort
        try:
            self.close()
        except Exception:
            pass

    # -- checks -----------------------------------------------------------------------------------------
    def _check_ready(self, w: _Worker) -> None:
        info = w.info or {}
        missing = [k for k in self.spec.image_keys + self.spec.proprio_keys if k not in info.get("obs_keys", [])]
        if missing:
            raise UserError(f"env observations lack key(s) {', '.join(missing)} the policy reads "
                            f"(env has: {', '.join(info.get('obs_keys', []))})")
        for k, shape in info["image_shapes"].items():
            if len(shape) != 3 or shape[2] != 3 or info["image_dtypes"][k] != "uint8":
                raise UserError(f"env image '{k}': shape {shape} {info['image_dtypes'][k]}; expected (H, W, 3) uint8")
            if self.expect_image_size is not None and (shape[0], shape[1]) != (self.expect_image_size,) * 2:
                raise UserError(f"env image '{k}' is {shape[0]}x{shape[1]} but the policy was trained on "
                                f"{self.expect_image_size}x{self.expect_image_size} images")
        if self.expect_proprio_dim is not None and info["proprio_dim"] != self.expect_proprio_dim:
            raise UserError(f"env proprio ({'+'.join(self.spec.proprio_keys)}) has {info['proprio_dim']} numbers "
                            f"but the policy expects {self.expect_proprio_dim}")
        self.horizon = info["horizon"]

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, policy: Callable[[dict, list[int]], np.ndarray], episodes: Sequence[int] | int, seed: int = 0,
            video_episodes: Collection[int] = (), video_dir: "str | os.PathLike | None" = None,
            video_prefix: str = "", progress: bool = False, desc: str = "eval",
            on_episode: Optional[Callable[[EpisodeResult], None]] = None) -> RolloutRun:
        """Run the episodes ``episodes`` (indices; an int ``n`` means ``range(n)``) and return their records.

        ``policy(obs, episodes) -> actions``: ``obs`` maps each image key to uint8 ``(B, H, W, 3)`` and
        ``"proprio"`` to float32 ``(B, P)``; ``episodes`` are the episode indices of the rows; returns
        ``(B, A)`` actions. If the policy has ``start_episode(episode, seed)`` it is called at every
        (re)start of an episode. Episodes in ``video_episodes`` are written to ``video_dir`` as mp4.
        """
        if self._closed:
            raise RuntimeError("RolloutPool.run: the pool is closed")
        if isinstance(episodes, int):
            episodes = range(episodes)
        episodes = [int(e) for e in episodes]
        video_episodes = set(int(e) for e in video_episodes) if video_dir is not None else set()
        return _Run(self, policy, episodes, seed, video_episodes, video_dir, video_prefix, progress, desc,
                    on_episode).execute()
