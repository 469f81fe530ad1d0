"""Experiment 1, DR3's SARSA-vs-TD probe (the paper's first figure).

    python -m experiments.sarsa_vs_td --scale cpu        # or --scale gpu; --dry-run prints the commands
    python -m experiments.sarsa_vs_td --scale recipe     # with Q bootstrapped: the TD recipe's critic, DR3 off

Offline critic training on a ``mixed`` dataset with CQL and DR3 off (``visual_dr3/configs/experiments/probe.yaml``) and
the actor behaviour-cloned for the whole run (``--algo.bc_warmup_steps`` = ``--max-steps``). Two conditions:
``sarsa`` (a' = the dataset's next action) and ``td`` (a' ~ the behaviour-cloned policy at s'). The report
(grouped by ``algo.backup``) plots phi(s,a)·phi(s',a') (``dr3_dot``), ``srank`` and ``q_mean`` over steps.

``--scale recipe`` asks the question where Q bootstraps to the reward's scale: the TD recipe
(``--config td`` over the learning recipe: a target encoder, CQL weight 0.1, 5-step backups at tau 0.02, the BC
warm-up then AWR) with DR3 off, the two conditions differing only in a' (the policy's mean at s' for ``td``, the
data's next action for ``sarsa``); one 50-episode evaluation at the end. Seeds 1-3.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: python experiments/sarsa_vs_td.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (CONFIG_DIR, DatasetSpec, ReportSpec, RunSpec, Scale, add_task_and_kind,
                                base_parser, check_args, main_flow, resolve_scale, roots, train_args)
from experiments.cql_vs_dr3 import study_train_args

EXPERIMENT = "sarsa_vs_td"
CONFIG = CONFIG_DIR / "probe.yaml"
TITLE = "SARSA vs TD probe"

#: the two scales (no evaluation: the probe measures features and Q-values only)
SCALES = {
    "cpu": Scale(name="cpu", image_size=48, max_steps=3000, batch_size=64, seeds=(0, 1), episodes=50,
                 log_every=25, checkpoint_every=500, gen_workers=2, jobs=1),
    "gpu": Scale(name="gpu", image_size=84, max_steps=100_000, batch_size=256, seeds=(0, 1, 2), episodes=200,
                 log_every=100, checkpoint_every=5000, gen_workers=16, jobs=3),
    # the learning recipe's scale (experiments.cql_vs_dr3 --scale recipe), where Q on the data's actions comes
    # within 0.3-0.5 of their Monte-Carlo return in 1,000 steps
    "recipe": Scale(name="recipe", image_size=48, max_steps=1000, batch_size=64, seeds=(1, 2, 3), episodes=50,
                    eval_every=1000, eval_episodes=50, eval_workers=2, log_every=100, checkpoint_every=500,
                    gen_workers=2, jobs=2),
}
#: the recipe scale's critic: the TD recipe (visual_dr3/configs/td.yaml) with DR3 off
RECIPE_FLAGS = ("--config", "td", "--dr3-coef", "0")

#: condition -> its train.py flags
CONDITIONS = {"sarsa": ("--backup", "sarsa"), "td": ("--backup", "td")}


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(EXPERIMENT, __doc__.split("\n\n")[0], SCALES)
    add_task_and_kind(p, "probe")
    return p


def plan(args: argparse.Namespace) -> tuple[Scale, list[RunSpec]]:
    """The scale and the runs (condition x seed) the arguments ask for; pure (touches no file)."""
    scale = resolve_scale(args, SCALES)
    out_root, _ = roots(args, EXPERIMENT)
    data = DatasetSpec(args.task, args.kind, scale.image_size, scale.episodes, args.data_dir, scale.horizon)
    extra = tuple(shlex.split(args.train_args))
    runs = []
    for cond, flags in CONDITIONS.items():
        for seed in scale.seeds:
            out = out_root / f"{cond}_s{seed}"
            if scale.name == "recipe":
                targs = study_train_args(CONFIG, scale, args.task, data.path, out, seed, (*RECIPE_FLAGS, *flags),
                                         extra)
            else:
                cond_flags = ("--algo.bc_warmup_steps", str(scale.max_steps), *flags)
                targs = train_args(CONFIG, scale, args.task, data.path, out, seed, cond_flags, extra)
            runs.append(RunSpec(name=f"{cond}_s{seed}", group=EXPERIMENT, condition=cond, seed=seed, out_dir=out,
                                dataset=data, max_steps=scale.max_steps, train_args=targs))
    return scale, runs


def reports(args: argparse.Namespace, scale: Scale, runs: Sequence[RunSpec]):
    _, report = roots(args, EXPERIMENT)
    title = f"{TITLE} on {args.task}/{args.kind} ({scale.describe()})"
    return [ReportSpec(report, title, tuple(runs), group_by="algo.backup")], None, ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    scale, runs = plan(args)
    return main_flow(runs, scale, lambda: reports(args, scale, runs), args)


if __name__ == "__main__":
    sys.exit(main())
