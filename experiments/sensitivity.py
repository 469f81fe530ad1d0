"""Experiment 3, DR3 sensitivity on one task: the c0 sweep and the feature choice.

    python -m experiments.sensitivity --scale cpu        # or --scale gpu; --dry-run prints the commands

Config ``visual_dr3/configs/experiments/sensitivity.yaml`` (CQL critic, ``mixed`` data). Runs: ``--dr3-coef`` in
``--coefs`` (default 0, 0.001, 0.01, 0.1: off and three values across two orders of magnitude) with encoder
features, and ``--dr3.features penultimate`` at ``--features-coef`` (default 0.01; its encoder counterpart is the
sweep's run at that c0, shared). Two reports: ``c0_sweep`` (grouped by ``dr3.coef``) and ``features`` (grouped by
``dr3.features``), and an index page with both tables.

``--scale recipe`` runs the sweep on the learning recipe instead (the cpu preset with the imitation-trained actor
encoder, 1,000 steps, 50 evaluation episodes at 4 points, seeds 1-3: the scale of ``cql_vs_dr3 --scale recipe``,
whose CQL, encoder-DR3 and penultimate-DR3 runs at c0 0.01 are the same commands). ``--no-features`` leaves out
the feature comparison (the c0 sweep only).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: python experiments/sensitivity.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (CONFIG_DIR, DatasetSpec, ReportSpec, RunSpec, Scale, add_task_and_kind,
                                base_parser, check_args, fmt_coef, main_flow, resolve_scale, roots)
from experiments.cql_vs_dr3 import SCALES as STUDY_SCALES
from experiments.cql_vs_dr3 import study_train_args

EXPERIMENT = "sensitivity"
CONFIG = CONFIG_DIR / "sensitivity.yaml"
TITLE = "DR3 sensitivity"

SCALES = {
    "cpu": Scale(name="cpu", image_size=48, max_steps=1500, batch_size=64, seeds=(0, 1), episodes=50,
                 eval_every=750, eval_episodes=20, eval_workers=2, log_every=25, checkpoint_every=500,
                 gen_workers=2, jobs=1),
    "gpu": Scale(name="gpu", image_size=84, max_steps=100_000, batch_size=256, seeds=(0, 1, 2), episodes=200,
                 eval_every=10_000, eval_episodes=50, eval_workers=4, log_every=100, checkpoint_every=5000,
                 gen_workers=16, jobs=4),
    # the learning recipe's scale (cql_vs_dr3 --scale recipe): success is measurable there
    "recipe": STUDY_SCALES["recipe"],
}
DEFAULT_COEFS = (0.0, 0.001, 0.01, 0.1)


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(EXPERIMENT, __doc__.split("\n\n")[0], SCALES)
    add_task_and_kind(p, "sweep")
    p.add_argument("--coefs", type=float, nargs="+", default=list(DEFAULT_COEFS),
                   help="c0 values of the sweep, encoder features (default 0 0.001 0.01 0.1)")
    p.add_argument("--features-coef", type=float, default=0.01,
                   help="c0 at which encoder and penultimate features are compared (default 0.01)")
    p.add_argument("--no-features", action="store_true",
                   help="only the c0 sweep: no encoder-vs-penultimate comparison (and no run added at "
                        "--features-coef)")
    return p


def _run(args, scale: Scale, data: DatasetSpec, out_root: Path, coef: float, features: str, seed: int,
         extra: tuple[str, ...]) -> RunSpec:
    cond = f"c0_{fmt_coef(coef)}_{features}"
    out = out_root / f"{cond}_s{seed}"
    flags = ("--dr3-coef", fmt_coef(coef), "--dr3.features", features)
    return RunSpec(name=f"{cond}_s{seed}", group=EXPERIMENT, condition=cond, seed=seed, out_dir=out, dataset=data,
                   max_steps=scale.max_steps,
                   train_args=study_train_args(CONFIG, scale, args.task, data.path, out, seed, flags, extra))


def plan(args: argparse.Namespace) -> tuple[Scale, list[RunSpec]]:
    """The scale and the runs: the c0 sweep (encoder), then penultimate at ``--features-coef``; pure."""
    scale = resolve_scale(args, SCALES)
    out_root, _ = roots(args, EXPERIMENT)
    data = DatasetSpec(args.task, args.kind, scale.image_size, scale.episodes, args.data_dir, scale.horizon)
    extra = tuple(shlex.split(args.train_args))
    coefs = list(dict.fromkeys(args.coefs))
    if not args.no_features and args.features_coef not in coefs:  # the encoder side of the feature comparison
        coefs.append(args.features_coef)
    runs = []
    for coef in coefs:
        for seed in scale.seeds:
            runs.append(_run(args, scale, data, out_root, coef, "encoder", seed, extra))
    for seed in () if args.no_features else scale.seeds:
        runs.append(_run(args, scale, data, out_root, args.features_coef, "penultimate", seed, extra))
    return scale, runs


def reports(args: argparse.Namespace, scale: Scale, runs: Sequence[RunSpec]):
    """``<report>/c0_sweep``, ``<report>/features`` and ``<report>/index.md``."""
    _, report = roots(args, EXPERIMENT)
    where = f"{args.task}/{args.kind}"
    fc = fmt_coef(args.features_coef)
    sweep = tuple(r for r in runs if r.condition.endswith("_encoder"))
    feats = tuple(r for r in runs if r.condition.startswith(f"c0_{fc}_"))
    specs = [ReportSpec(report / "c0_sweep", f"{TITLE}: c0 sweep on {where} ({scale.describe()})", sweep,
                        group_by="dr3.coef", name="c0 sweep (encoder features)")]
    if not args.no_features:
        specs.append(ReportSpec(report / "features", f"{TITLE}: encoder vs penultimate features at c0 = {fc} on "
                                f"{where} ({scale.describe()})", feats, group_by="dr3.features",
                                name=f"features at c0 = {fc}"))
    return specs, report, f"{TITLE} on {where} ({scale.describe()})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if any(c < 0 for c in args.coefs) or args.features_coef <= 0:
        p.error("--coefs: expected numbers >= 0 and --features-coef a positive number")
    scale, runs = plan(args)
    return main_flow(runs, scale, lambda: reports(args, scale, runs), args)


if __name__ == "__main__":
    sys.exit(main())
