"""The records of a rollout run: per-episode :class:`EpisodeResult`, where the time went (:class:`RunTiming`),
the run's outcome (:class:`RolloutRun`) and :class:`RolloutError`. Produced by
:mod:`~visual_dr3.evaluation.lockstep`; no torch, no robosuite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


class RolloutError(RuntimeError):
    """The rollouts cannot go on (e.g. no worker can build the environment)."""


@dataclass
class EpisodeResult:
    """One episode's record (``to_dict`` gives the JSON form, with ``return`` as the key)."""

    episode: int
    seed: int
    success: bool = False
    ret: float = 0.0
    length: int = 0
    attempts: int = 1
    error: Optional[str] = None
    seconds: float = 0.0
    video: Optional[str] = None
    obs_digest: Optional[str] = None  # fingerprint of every observation, reward and end flag (equal: same trajectory)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["return"] = d.pop("ret")
        return {k: d[k] for k in ("episode", "seed", "success", "return", "length", "attempts", "error",
                                  "seconds", "video", "obs_digest")}


@dataclass
class RunTiming:
    """Where a run's time went, summed over its env steps and resets: the workers' time in ``env.step`` /
    ``env.reset`` without rendering (physics, controller, observables), in rendering (``sim.render``), and the
    time in the policy (``calls`` calls over ``rows`` observations: the parent's batched calls, or the
    workers' own when the policy runs in them)."""

    env_seconds: float = 0.0
    render_seconds: float = 0.0
    policy_seconds: float = 0.0
    calls: int = 0
    rows: int = 0


@dataclass
class RolloutRun:
    """Outcome of :meth:`RolloutPool.run`: per-episode records (sorted by episode) and timings."""

    results: list[EpisodeResult]
    seconds: float  # wall time of the run, including waiting for workers to start
    rollout_seconds: float  # wall time after the first worker was ready
    warnings: list[str]
    timing: RunTiming = dataclasses.field(default_factory=RunTiming)

    @property
    def records(self) -> list[dict]:
        return [r.to_dict() for r in self.results]
