"""The application layer: the commands (``train.py``, ``eval.py``) and what only they do.

- :mod:`~visual_dr3.app.train`: ``run`` and ``main`` of ``python train.py`` (run folder, loggers, callbacks,
  the summary); :mod:`~visual_dr3.app.dataset`: the run's dataset, generated when missing;
  :mod:`~visual_dr3.app.cli_args`: flags and config files to a validated ``TrainConfig``.
- :mod:`~visual_dr3.app.eval`: ``main`` of ``python eval.py``; :mod:`~visual_dr3.app.console`: the installed
  console scripts (``visual-dr3-train``, ``-eval``, ``-generate``, ``-report``).

Layers, each importing only those below it: ``app`` -> ``evaluation``, ``report`` -> ``checkpoint`` ->
``learner`` -> ``data`` -> ``envs`` -> ``fileio``, ``errors``.
"""
