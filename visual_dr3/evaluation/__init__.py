"""Evaluation in simulation: parallel rollout workers, batched inference, Wilson intervals, videos.

Kept light to import (no torch, no robosuite): rollout workers import this package. The public names are
loaded on first use:

- :mod:`~visual_dr3.evaluation.rollout` (the design; it re-exports these): :mod:`~visual_dr3.evaluation.pool`:
  ``RolloutPool``, ``run_rollouts``; :mod:`~visual_dr3.evaluation.policy`: ``TorchPolicy``;
  :mod:`~visual_dr3.evaluation.workers`: ``FaultSpec``; :mod:`~visual_dr3.evaluation.lockstep`:
  ``EpisodeResult``, ``RolloutRun``, ``RolloutError``
- :mod:`~visual_dr3.evaluation.stats`: ``episode_seed``, ``wilson_interval``, ``summarize``
- :mod:`~visual_dr3.evaluation.video`: ``write_episode_video``
- :mod:`~visual_dr3.evaluation.cli`: ``main`` (``python eval.py``), ``load_policy``, ``evaluate_checkpoint``
- :mod:`~visual_dr3.evaluation.callback`: ``EvalCallback``, ``make_eval_callback`` (imports Lightning)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RolloutPool": "pool", "run_rollouts": "pool", "TorchPolicy": "policy", "FaultSpec": "workers",
    "EpisodeResult": "lockstep", "RolloutRun": "lockstep", "RolloutError": "lockstep",
    "episode_seed": "stats", "wilson_interval": "stats", "summarize": "stats",
    "write_episode_video": "video",
    "load_policy": "cli", "evaluate_checkpoint": "cli",
    "EvalCallback": "callback", "make_eval_callback": "callback",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
