"""The stitching benchmark: lift from ``stitch`` data, where no trajectory shows the task and copying cannot succeed.

    python -m experiments.stitch                     # data, every condition x seeds 1-3, the report
    python -m experiments.stitch --dry-run           # the commands, and what is already done
    python -m experiments.stitch --conditions bc bc_filtered --seeds 4   # a subset
    python -m experiments.stitch --sampling cog      # batches half prior, half task episodes (COG's sampling)

The data (``python -m visual_dr3.data.generate --kind stitch``): prior episodes grasp the cube and let go, or
grasp empty spots beside it; task episodes start at the grasped cube and lift it. No episode runs from an initial
state to success, the behaviour at the initial states splits three ways, and the grasp that leads to success is
followed, in its own episodes, only by letting go: one step of improvement on the behaviour's own values (the SARSA
recipe) sees no reward behind it, values carried back by TD backups through the task episodes do.

Conditions, each on the learning recipe (the lift cpu preset with the actor on its own imitation-trained encoder):
``bc`` (behaviour cloning), ``bc_filtered`` (BC on the successful demos only: ``--algo.bc_filter success``),
``sarsa`` (the recipe as it is: CQL+DR3, 5-step SARSA backups), ``sarsa_kl`` (with KL), ``td`` (CQL with the TD
recipe, a' = pi's mean: :data:`TD_FLAGS`), ``td_dr3`` / ``td_dr3_pen`` (DR3 at c0 on the encoder / the Q heads' penultimate layer) and
``td_kl``, ``td_dr3_pen_kl`` (with KL). One report page with every condition's table, differences in success and
``summary.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: python experiments/stitch.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (CONFIG_DIR, KL_COEF, DatasetSpec, ReportSpec, RunSpec, Scale, base_parser,
                                check_args, fmt_coef, main_flow, resolve_scale, roots)
from experiments.cql_vs_dr3 import CONFIGS, study_train_args

EXPERIMENT = "stitch"
TITLE = "Stitching benchmark (lift, stitch data)"
SCALES = {
    # the learning recipe's scale (experiments.cql_vs_dr3 --scale recipe) with a 100-episode stitch file
    "recipe": Scale(name="recipe", image_size=48, max_steps=1000, batch_size=64, seeds=(1, 2, 3), episodes=100,
                    eval_every=250, eval_episodes=50, eval_workers=2, log_every=100, checkpoint_every=250,
                    gen_workers=2, jobs=2),
    "gpu": Scale(name="gpu", image_size=84, max_steps=100_000, batch_size=256, seeds=(1, 2, 3), episodes=400,
                 eval_every=10_000, eval_episodes=50, eval_workers=4, log_every=100, checkpoint_every=5000,
                 gen_workers=16, jobs=4),
}
#: the TD conditions' backup and critic: the TD recipe (visual_dr3/configs/td.yaml: a' = the policy's mean at s',
#: a target encoder, CQL weight 0.1 with a gap floor, DR3 on the penultimate layer; reports/td_recipe/)
TD_FLAGS: tuple[str, ...] = ("--config", "td")
CONDITIONS = ("bc", "bc_filtered", "sarsa", "sarsa_kl", "td", "td_dr3", "td_dr3_pen", "td_kl", "td_dr3_pen_kl")
#: how batches are drawn: ``uniform`` over the file's transitions (a batch of 64 holds ~1.5 task transitions: task
#: episodes end at success, 6 steps on average), or ``cog``: half from mask/prior, half from mask/task, as COG
#: samples its prior and task data (visual_dr3/configs/experiments/stitch_cog.yaml)
SAMPLING = {"uniform": (), "cog": ("--config", str(CONFIG_DIR / "stitch_cog.yaml"))}


def conditions(dr3_coef: float, kl_coef: float = KL_COEF, names: Sequence[str] = CONDITIONS
               ) -> dict[str, tuple[str, ...]]:
    """condition -> its train.py flags (on top of the recipe), for the conditions ``names``."""
    c0, lam = fmt_coef(dr3_coef), fmt_coef(kl_coef)
    kl = ("--kl.coef", lam)
    table = {
        "bc": ("--algorithm", "bc"),
        "bc_filtered": ("--algorithm", "bc", "--algo.bc_filter", "success"),
        "sarsa": ("--dr3-coef", c0),
        "sarsa_kl": ("--dr3-coef", c0, *kl),
        "td": (*TD_FLAGS, "--dr3-coef", "0"),
        "td_dr3": (*TD_FLAGS, "--dr3-coef", c0, "--dr3.features", "encoder"),
        "td_dr3_pen": (*TD_FLAGS, "--dr3-coef", c0, "--dr3.features", "penultimate"),
        "td_kl": (*TD_FLAGS, "--dr3-coef", "0", *kl),
        "td_dr3_pen_kl": (*TD_FLAGS, "--dr3-coef", c0, "--dr3.features", "penultimate", *kl),
    }
    return {n: table[n] for n in names}


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(EXPERIMENT, __doc__.split("\n\n")[0], SCALES)
    p.set_defaults(scale="recipe")
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS),
                   help="conditions (default: all): " + ", ".join(CONDITIONS))
    p.add_argument("--dr3-coef", type=float, default=0.01, help="c0 of the DR3 conditions (default 0.01)")
    p.add_argument("--sampling", choices=list(SAMPLING), default="uniform",
                   help="batches uniform over the file's transitions, or cog: half prior, half task episodes "
                        "(run folders and report get a _cog suffix; default uniform)")
    p.add_argument("--kl-coef", type=float, default=KL_COEF,
                   help=f"lambda of the *_kl conditions (train.py --kl.coef; default {KL_COEF:g})")
    return p


def plan(args: argparse.Namespace) -> tuple[Scale, list[RunSpec]]:
    """The scale and the runs (condition x seed); pure (touches no file)."""
    scale = resolve_scale(args, SCALES)
    out_root, _ = roots(args, EXPERIMENT)
    extra = tuple(shlex.split(args.train_args))
    data = DatasetSpec("lift", "stitch", scale.image_size, scale.episodes, args.data_dir, scale.horizon)
    group = "lift_stitch"
    suffix = "" if args.sampling == "uniform" else f"_{args.sampling}"
    runs = []
    for cond, flags in conditions(args.dr3_coef, args.kl_coef, args.conditions).items():
        flags = (*flags, *SAMPLING[args.sampling])
        for seed in scale.seeds:
            out = out_root / group / f"{cond}{suffix}_s{seed}"
            runs.append(RunSpec(name=f"{group}/{cond}{suffix}_s{seed}", group=group, condition=f"{cond}{suffix}",
                                seed=seed, out_dir=out, dataset=data, max_steps=scale.max_steps,
                                train_args=study_train_args(CONFIGS["mixed"], scale, "lift", data.path, out, seed,
                                                            flags, extra)))
    return scale, runs


def reports(args: argparse.Namespace, scale: Scale, runs: Sequence[RunSpec]):
    """One page, ``<report>/index.md``, over every run (default ``reports/stitch/<scale>``, ``..._cog`` with
    ``--sampling cog``)."""
    _, report = roots(args, EXPERIMENT)
    if args.report is None and args.sampling != "uniform":
        report = report.with_name(f"{report.name}_{args.sampling}")
    return [ReportSpec(report, f"{TITLE} ({scale.describe()})", tuple(runs), name="lift / stitch")], None, ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if args.dr3_coef <= 0 or args.kl_coef <= 0:
        p.error("--dr3-coef, --kl-coef: expected positive numbers (the conditions without them have 0)")
    scale, runs = plan(args)
    return main_flow(runs, scale, lambda: reports(args, scale, runs), args)


if __name__ == "__main__":
    sys.exit(main())
