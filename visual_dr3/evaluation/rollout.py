"""Parallel evaluation rollouts: envs in worker processes, batched policy inference in the parent (or a copy
of the policy in each worker).

Design
------
- A :class:`RolloutPool` starts ``workers`` processes (multiprocessing ``spawn`` context, so every worker
  has its own fresh MuJoCo/EGL context; ``MUJOCO_GL`` is set by ``import visual_dr3`` before the worker
  imports mujoco). Each worker builds its env once (1.5-3 s, ``hard_reset=False``) and then runs any
  number of episodes: the pool is reused across episodes, and the training callback keeps one pool for the
  whole run.
- Act on what is ready: the parent handles every reply that has come, runs ONE batched policy call
  (``policy(obs_batch, episodes) -> actions``) for every env whose observation is in and sends each its
  action through its worker's pipe, while the other envs keep stepping. A worker may hold several envs
  (``envs_per_worker``, stepped in turn in the order their actions arrive): with 2, it steps one env while
  the parent computes the other's action, so the policy call and the simulator overlap even with one
  worker. Envs that finish an episode get the next one right away.
- Or the policy in the workers (``policy_in_workers``; :func:`~visual_dr3.evaluation.pool.policy_in_workers`
  picks it when the policy is on the CPU and the workers take every core): each worker receives the
  policy's CPU copy (``policy.for_workers()``, pickled) once per run and runs each episode it is given by
  itself, one env per worker, reporting every step; the parent hands out episodes, keeps the records and
  the frames of video episodes, and applies the same timeouts and retries.
- Episode ``i`` of a run with seed ``S`` starts from seed :func:`~visual_dr3.evaluation.stats.episode_seed`
  ``(S, i)`` (object placement and robot joint noise depend on that alone), whatever the number of workers.
  robosuite also draws some things when it *builds* an env (Lift's cube size is sampled from ``env.rng`` at
  model load, and ``hard_reset=False`` keeps that model): every worker builds its env with the same
  ``env_seed`` (:func:`env_seed_for` of the run seed), so all workers hold identical envs and an episode's
  whole trajectory is a function of its seed and the policy, not of which worker ran it or what ran before.
- An episode ends at success (``env._check_success()``) or at the env's horizon. Records: success, return
  (sum of the sparse reward), length (env steps), seed, attempts, error.
- A worker that dies or raises is reported (a ``warning:`` line naming the episode, its seed and the
  error), replaced by a fresh worker, and its episode retried once from the same seed; a second failure
  records the episode as failed (``success: false`` and ``error``), never silently dropped.

Every record carries ``obs_digest``, a fingerprint of every observation (images included), reward and end
flag its env returned: equal digests mean the same trajectory, pixel for pixel.

Where it lives: :mod:`~visual_dr3.evaluation.workers` (the worker process, :class:`FaultSpec`,
:class:`WorkerSpec`), :mod:`~visual_dr3.evaluation.pool` (:class:`RolloutPool`),
:mod:`~visual_dr3.evaluation.lockstep` (one run's loop and its records: :class:`EpisodeResult`,
:class:`RolloutRun`, :class:`RolloutError`) and :mod:`~visual_dr3.evaluation.policy` (:class:`TorchPolicy`).
This module re-exports them. Workers import numpy and robosuite only (torch too when the policy runs in
them); the parent imports torch only when a :class:`TorchPolicy` is built.
"""

from __future__ import annotations

from visual_dr3.evaluation.lockstep import MAX_ATTEMPTS
from visual_dr3.evaluation.records import EpisodeResult, RolloutError, RolloutRun, RunTiming
from visual_dr3.evaluation.policy import TorchPolicy
from visual_dr3.evaluation.pool import START_METHOD, RolloutPool
from visual_dr3.evaluation.workers import (BUSY, DEAD, HAS_OBS, IDLE, PROPRIO_KEY, STARTING, FaultSpec,  # noqa: F401
                                            WorkerSpec, format_exc, _pack_obs)

__all__ = ["EpisodeResult", "FaultSpec", "MAX_ATTEMPTS", "PROPRIO_KEY", "RolloutError", "RolloutPool", "RolloutRun", "RunTiming",
           "START_METHOD", "TorchPolicy", "WorkerSpec"]
