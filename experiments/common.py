"""Shared machinery of the DR3 study scripts (``experiments/*.py``): the whole flow, and re-exports.

A study script builds a list of :class:`RunSpec` (one ``train.py`` command per condition x seed) with a pure
function, then :func:`main_flow` generates the missing datasets, runs what is not finished yet and calls
:func:`visual_dr3.report.build_report` on the run folders. The parts live in :mod:`experiments.plan` (scale
presets, datasets, runs, ``train.py`` flags, the command line), :mod:`experiments.runner` (datasets,
``train.py`` subprocesses, skip/resume states: ``train.log`` and ``experiment.json`` in every run folder,
``--resume auto`` on every command) and :mod:`experiments.reports` (report pages and the index); this module
re-exports what the study scripts and tests use (``TRAIN_PY`` is read by ``RunSpec.command`` in
:mod:`experiments.plan`: replace it there).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

from experiments.plan import (CONFIG_DIR, KL_COEF, REPO_ROOT, TRAIN_PY, DatasetSpec, RunSpec, Scale,  # noqa: F401
                              add_task_and_kind, base_parser, check_args, fmt_coef, resolve_scale, roots,
                              train_args)
from experiments.reports import ReportSpec, build_reports, write_index  # noqa: F401
from experiments.runner import (EXIT_DIVERGED, EXIT_SIGNALS, LOG, MARKER, Result, Runner,  # noqa: F401
                                dry_run, ensure_datasets, run_state, say, summarize, write_marker)


# --------------------------------------------------------------------------------------------------
# the whole flow
# --------------------------------------------------------------------------------------------------
ReportsFn = Callable[[], tuple[list[ReportSpec], Optional[Path], str]]


def main_flow(runs: Sequence[RunSpec], scale: Scale, reports: ReportsFn, args: argparse.Namespace) -> int:
    """Datasets, runs, report; returns the exit code. ``reports()`` gives (report specs, index folder or None,
    index title)."""
    say(f"{len(runs)} runs; {scale.describe()}")
    ensure_datasets([r.dataset for r in runs], scale.gen_workers, args.dry_run)
    if args.dry_run:
        dry_run(runs)
        specs, index, index_title = reports()
        if not args.no_report:
            build_reports(specs, index, index_title, dry_run=True)
        return 0
    results = Runner(runs, scale.jobs).run_all()
    code = summarize(results)
    if not args.no_report:
        specs, index, index_title = reports()
        for page in build_reports(specs, index, index_title, findings=args.findings):
            say(f"report page: {page}")
    return code
