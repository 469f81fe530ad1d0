"""Experiment 2, CQL vs CQL+DR3 on ``lift`` and ``pick_place`` with ``mixed`` and ``cog`` data.

    python -m experiments.cql_vs_dr3 --scale cpu        # or --scale gpu; --dry-run prints the commands

For each task x data kind (a "cell"): ``cql`` (``--dr3-coef 0``) and ``dr3`` (``--dr3-coef 0.01``, encoder
features) x seeds (``--conditions`` adds ``dr3_pen`` and ``dr3_both``, DR3 on the Q heads' penultimate layer or
on both, ``kl``, CQL+KL, and ``dr3_kl``, CQL+DR3+KL: ``--kl.coef`` of ``--kl-coef``, ``dr3_pen_kl`` and
``dr3_both_kl`` with DR3 on those layers; ``bc``, behaviour cloning alone, the floor), with success-rate
evaluations during training. ``--scale recipe`` runs the conditions on the learning recipe (the cpu preset of
``python train.py``, with the actor on its own imitation-trained encoder), where policies grasp. Configs: ``visual_dr3/configs/experiments/cql_vs_dr3_mixed.yaml`` and
``cql_vs_dr3_cog.yaml`` (prior/task 50/50, behaviour-cloning warm-up of 10% of the steps). One report per cell
(grouped by ``dr3.coef``: success rate, final and best with intervals, dr3_dot, srank, Q-values) and an index
page with every cell's table. The CPU scale runs ``lift`` only by default (``--tasks lift pick_place`` for both).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: python experiments/cql_vs_dr3.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (CONFIG_DIR, KL_COEF, DatasetSpec, ReportSpec, RunSpec, Scale, base_parser,
                                check_args, fmt_coef, main_flow, resolve_scale, roots, train_args)

EXPERIMENT = "cql_vs_dr3"
TITLE = "CQL vs CQL+DR3"
CONFIGS = {"mixed": CONFIG_DIR / "cql_vs_dr3_mixed.yaml", "cog": CONFIG_DIR / "cql_vs_dr3_cog.yaml"}
#: share of the steps spent behaviour-cloning the actor on cog data (COG: 10k of 100k)
COG_BC_FRACTION = 0.1

SCALES = {
    "cpu": Scale(name="cpu", image_size=48, max_steps=1500, batch_size=64, seeds=(0, 1, 2), episodes=50,
                 eval_every=500, eval_episodes=20, eval_workers=2, log_every=25, checkpoint_every=500,
                 gen_workers=2, jobs=1),
    "gpu": Scale(name="gpu", image_size=84, max_steps=100_000, batch_size=256, seeds=(0, 1, 2), episodes=200,
                 eval_every=10_000, eval_episodes=50, eval_workers=4, log_every=100, checkpoint_every=5000,
                 gen_workers=16, jobs=4),
    # the learning recipe's scale: the cpu preset's 1,000 steps, 50 evaluation episodes at 4 points, the seeds
    # the recipe was not tuned on
    "recipe": Scale(name="recipe", image_size=48, max_steps=1000, batch_size=64, seeds=(1, 2, 3), episodes=50,
                    eval_every=250, eval_episodes=50, eval_workers=2, log_every=100, checkpoint_every=500,
                    gen_workers=2, jobs=2),
}
#: tasks run by default at each scale (CPU: one task, to finish in a few hours)
DEFAULT_TASKS = {"cpu": ("lift",), "gpu": ("lift", "pick_place"), "recipe": ("lift",)}
#: the recipe scale's config: the cpu preset (visual_dr3/configs/cpu/<task>.yaml over <task>.yaml) plus study settings
RECIPE_CONFIG = CONFIG_DIR / "learn_to_grasp.yaml"
#: the recipe scale's flags on top of the preset: on mixed lift data the actor on the critic's features grasped
#: 28/150 and on its own imitation-trained encoder 76-101/150 (reports/learn_to_grasp/cpu_mixed_v3/), so every
#: condition gets that actor and the conditions differ only in the critic's regularizers
RECIPE_FLAGS = ("--model.actor_encoder", "separate_bc")
CONDITIONS = ("cql", "dr3", "dr3_pen", "dr3_both", "dr3_detach", "kl", "dr3_kl", "dr3_pen_kl", "dr3_both_kl", "bc")


def study_train_args(config: Path, scale: Scale, task: str, dataset: Path, out_dir: Path, seed: int,
                     condition: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """``train.py`` flags of one DR3-study run: ``config`` on the gpu base preset, or at the recipe scale the
    learning recipe in its place (the cpu preset, :data:`RECIPE_CONFIG`, :data:`RECIPE_FLAGS` before the
    condition's flags). Shared by this study and ``experiments.sensitivity``."""
    if scale.name == "recipe":
        return train_args(RECIPE_CONFIG, scale, task, dataset, out_dir, seed, (*RECIPE_FLAGS, *condition), extra,
                          preset="cpu")
    return train_args(config, scale, task, dataset, out_dir, seed, condition, extra)


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(EXPERIMENT, __doc__.split("\n\n")[0], SCALES)
    from visual_dr3.envs.tasks import TASKS

    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None,
                   help="tasks (default: lift on cpu, lift pick_place on gpu)")
    p.add_argument("--kinds", nargs="+", choices=sorted(CONFIGS), default=["mixed", "cog"],
                   help="dataset kinds (default mixed cog)")
    p.add_argument("--dr3-coef", type=float, default=0.01, help="c0 of the CQL+DR3 condition (default 0.01)")
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=["cql", "dr3"],
                   help="conditions (default cql dr3; dr3_pen / dr3_both = DR3 on the penultimate layer / on both; "
                        "dr3_detach = encoder DR3 with no gradient through phi(s') (--dr3.detach_next true, "
                        "COG's code); kl = CQL+KL, dr3_kl = CQL+DR3+KL (dr3_pen_kl, dr3_both_kl: on those "
                        "layers); bc = behaviour cloning alone, the floor, on the same data, seeds and evaluations)")
    p.add_argument("--kl-coef", type=float, default=KL_COEF,
                   help=f"lambda of the *kl conditions (train.py --kl.coef; default {KL_COEF:g})")
    return p


def conditions(dr3_coef: float, kl_coef: float = KL_COEF,
               names: Sequence[str] = ("cql", "dr3")) -> dict[str, tuple[str, ...]]:
    """condition -> its train.py flags, for the conditions ``names``."""
    c0, lam = fmt_coef(dr3_coef), fmt_coef(kl_coef)
    table = {"cql": ("--dr3-coef", "0"), "dr3": ("--dr3-coef", c0, "--dr3.features", "encoder"),
             "dr3_pen": ("--dr3-coef", c0, "--dr3.features", "penultimate"),
             "dr3_both": ("--dr3-coef", c0, "--dr3.features", "both"),
             "dr3_detach": ("--dr3-coef", c0, "--dr3.detach_next", "true"),
             "bc": ("--algorithm", "bc")}
    # each regularized-critic condition also with the KL term (kl = cql + KL, dr3_pen_kl = dr3_pen + KL, ...)
    table.update({("kl" if base == "cql" else f"{base}_kl"): (*table[base], "--kl.coef", lam)
                  for base in ("cql", "dr3", "dr3_pen", "dr3_both")})
    return {name: table[name] for name in names}


def plan(args: argparse.Namespace) -> tuple[Scale, list[RunSpec]]:
    """The scale and the runs (task x kind x condition x seed); pure (touches no file)."""
    scale = resolve_scale(args, SCALES)
    out_root, _ = roots(args, EXPERIMENT)
    extra = tuple(shlex.split(args.train_args))
    runs = []
    recipe = scale.name == "recipe"
    for task in args.tasks or DEFAULT_TASKS[args.scale]:
        for kind in args.kinds:
            data = DatasetSpec(task, kind, scale.image_size, scale.episodes, args.data_dir, scale.horizon)
            kind_flags: tuple[str, ...] = ()
            if kind == "cog" and not recipe:  # (the recipe's 500-step warm-up holds for every kind)
                kind_flags = ("--algo.bc_warmup_steps", str(int(scale.max_steps * COG_BC_FRACTION)))
            group = f"{task}_{kind}"
            for cond, flags in conditions(args.dr3_coef, args.kl_coef, args.conditions).items():
                for seed in scale.seeds:
                    out = out_root / group / f"{cond}_s{seed}"
                    runs.append(RunSpec(
                        name=f"{group}/{cond}_s{seed}", group=group, condition=cond, seed=seed, out_dir=out,
                        dataset=data, max_steps=scale.max_steps,
                        train_args=study_train_args(CONFIGS[kind], scale, task, data.path, out, seed,
                                                    (*kind_flags, *flags), extra)))
    return scale, runs


def reports(args: argparse.Namespace, scale: Scale, runs: Sequence[RunSpec]):
    """One report per cell (task x kind) under ``<report>/<task>_<kind>/`` and ``<report>/index.md``."""
    _, report = roots(args, EXPERIMENT)
    specs = []
    for group in dict.fromkeys(r.group for r in runs):
        cell = tuple(r for r in runs if r.group == group)
        task, kind = cell[0].dataset.task, cell[0].dataset.kind
        # beyond cql/dr3, more than dr3.coef tells the conditions apart: group by every key that differs
        more = any(c not in ("cql", "dr3") for c in args.conditions)
        specs.append(ReportSpec(report / group, f"{TITLE} on {task}/{kind} ({scale.describe()})", cell,
                                group_by=None if more else "dr3.coef", name=f"{task} / {kind}"))
    return specs, report, f"{TITLE} ({scale.describe()})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if args.dr3_coef <= 0:
        p.error(f"--dr3-coef: got {args.dr3_coef}; expected a positive number (the cql condition is c0 = 0)")
    if args.kl_coef <= 0:
        p.error(f"--kl-coef: got {args.kl_coef}; expected a positive number (the conditions without KL have 0)")
    scale, runs = plan(args)
    return main_flow(runs, scale, lambda: reports(args, scale, runs), args)


if __name__ == "__main__":
    sys.exit(main())
