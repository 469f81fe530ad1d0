"""Evaluation in simulation: parallel rollout workers, batched inference, Wilson intervals, videos.

Kept light to import (no torch, no robosuite): rollout workers import this package. Import the modules
themselves:

- :mod:`~visual_dr3.evaluation.rollout` (the design; it re-exports these): :mod:`~visual_dr3.evaluation.pool`:
  ``RolloutPool``; :mod:`~visual_dr3.evaluation.policy`: ``TorchPolicy``;
  :mod:`~visual_dr3.evaluation.workers`: ``FaultSpec``; :mod:`~visual_dr3.evaluation.lockstep`:
  ``EpisodeResult``, ``RolloutRun``, ``RolloutError``
- :mod:`~visual_dr3.evaluation.stats`: ``episode_seed``, ``wilson_interval``, ``summarize``
- :mod:`~visual_dr3.evaluation.video`: ``write_episode_video``
- :mod:`~visual_dr3.evaluation.evaluate`: ``evaluate_checkpoint`` (what ``python eval.py`` runs)
- :mod:`~visual_dr3.evaluation.callback`: ``EvalCallback``, ``make_eval_callback`` (imports Lightning)

Reading checkpoints (``read_checkpoint``, ``load_policy``, ``resolve_env_args``) lives in
:mod:`visual_dr3.checkpoint`; the command line in :mod:`visual_dr3.app.eval`.
"""
