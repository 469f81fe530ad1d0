"""Planning a DR3 study: scale presets, datasets, runs, ``train.py`` flags and the scripts' command line.

A study script (``experiments/*.py``) turns its command line (:func:`base_parser`, :func:`check_args`) into
a :class:`Scale` (:func:`resolve_scale`: the ``--scale`` preset with the overrides) and then, with a pure
function, into a list of :class:`RunSpec` (one ``train.py`` command per condition x seed, its flags from
:func:`train_args`) over the :class:`DatasetSpec` they train on. Nothing here runs anything: see
:mod:`experiments.runner` and :mod:`experiments.reports`, tied together by
:func:`experiments.common.main_flow`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO_ROOT / "train.py"
CONFIG_DIR = REPO_ROOT / "visual_dr3" / "configs" / "experiments"  # shipped with the package
#: lambda of the studies' kl and dr3_kl conditions: the value measured on mixed lift with the imitation-trained actor
#: encoder (tuning seed 4, CQL+DR3: 15 -> 7/50 after the warm-up without KL, 15 -> 31/50 with lambda 1.0;
#: reports/learn_to_grasp/cpu_mixed_v3/tuning_actor/)
KL_COEF = 1.0


# --------------------------------------------------------------------------------------------------
# scale presets
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Everything that changes between the CPU and the GPU version of an experiment."""

    name: str
    image_size: int
    max_steps: int
    batch_size: int
    seeds: tuple[int, ...]
    episodes: int  # dataset episodes per (task, kind)
    encoder: str = "drq"
    eval_every: int = 0  # 0: no evaluation during training
    eval_episodes: int = 20
    eval_workers: int = 2
    log_every: int = 100
    checkpoint_every: int = 5000
    gen_workers: int = 2  # dataset generation worker processes
    jobs: int = 1  # train.py processes at once
    horizon: Optional[int] = None  # episode limit of generated datasets and evaluation (None: the task's)

    def describe(self) -> str:
        """One line for report titles: ``CPU scale: 48x48 images, drq encoder, 1500 steps, ...``."""
        ev = (f"; evaluation: {self.eval_episodes} episodes every {self.eval_every} steps" if self.eval_every
              else "")
        seeds = ",".join(str(s) for s in self.seeds)
        return (f"{self.name.upper()} scale: {self.image_size}x{self.image_size} images, {self.encoder} encoder, "
                f"{self.max_steps} steps, batch {self.batch_size}, {self.episodes}-episode datasets, "
                f"seeds {seeds}{ev}")


def resolve_scale(args: argparse.Namespace, scales: dict[str, Scale]) -> Scale:
    """The ``--scale`` preset with the command line's overrides (``--seeds``, ``--max-steps``, ...) applied."""
    s = scales[args.scale]
    over = {"seeds": tuple(args.seeds) if args.seeds is not None else None, "max_steps": args.max_steps,
            "image_size": args.image_size, "episodes": args.episodes, "batch_size": args.batch_size,
            "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "jobs": args.jobs,
            "horizon": args.horizon}
    s = dataclasses.replace(s, **{k: v for k, v in over.items() if v is not None})
    if s.eval_every > s.max_steps:  # smoke runs with few steps still evaluate once (at the end)
        s = dataclasses.replace(s, eval_every=s.max_steps)
    return s


# --------------------------------------------------------------------------------------------------
# datasets and runs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One generated dataset: ``<data_dir>/<task>_<kind>_<size>px_<episodes>ep[_h<horizon>].hdf5``."""

    task: str
    kind: str
    image_size: int
    episodes: int
    data_dir: Path
    horizon: Optional[int] = None

    @property
    def path(self) -> Path:
        h = f"_h{self.horizon}" if self.horizon else ""
        return Path(self.data_dir) / f"{self.task}_{self.kind}_{self.image_size}px_{self.episodes}ep{h}.hdf5"

    def command(self, workers: int) -> list[str]:
        """The ``python -m visual_dr3.data.generate`` command that writes :attr:`path`."""
        cmd = [sys.executable, "-m", "visual_dr3.data.generate", "--task", self.task, "--kind", self.kind,
               "--episodes", str(self.episodes), "--image-size", str(self.image_size), "--out", str(self.path),
               "--workers", str(max(1, min(workers, self.episodes)))]
        return cmd + (["--horizon", str(self.horizon)] if self.horizon else [])


@dataclass(frozen=True)
class RunSpec:
    """One ``train.py`` run: a condition x seed, in its own folder."""

    name: str  # e.g. "td_s0"
    group: str  # report group: runs of one group are compared on one page
    condition: str  # e.g. "td"
    seed: int
    out_dir: Path
    dataset: DatasetSpec
    max_steps: int
    train_args: tuple[str, ...]  # everything after ``python train.py``

    def command(self) -> list[str]:
        return [sys.executable, str(TRAIN_PY), *self.train_args]


def train_args(config: Path, scale: Scale, task: str, dataset: Path, out_dir: Path, seed: int,
               condition: Sequence[str] = (), extra: Sequence[str] = (), preset: str = "none") -> tuple[str, ...]:
    """``train.py`` flags of one run: the experiment's ``--config`` first (flags after it override it), then
    the scale's flags, the condition's flags and the user's ``--train-args``. A ``--config`` in ``--train-args``
    (e.g. ``--config td``, the TD recipe) goes before the condition's flags, so that a condition means what its
    flags say whatever that config sets (``dr3`` is encoder DR3 under ``--config td`` too). The DR3 studies set
    their scale themselves and pin no preset (``--preset none``: the code's defaults under the experiment's
    config, as when the studies were run); the learning recipe's study passes the preset it measures."""
    args = ["--preset", preset, "--config", str(config), "--task", task, "--dataset", str(dataset),
            "--output-dir", str(out_dir),
            "--seed", str(seed), "--max-steps", str(scale.max_steps), "--batch-size", str(scale.batch_size),
            "--model.encoder", scale.encoder, "--log-every", str(scale.log_every),
            "--checkpoint-every", str(scale.checkpoint_every)]
    if scale.eval_every:
        args += ["--eval-every", str(scale.eval_every), "--eval-episodes", str(scale.eval_episodes),
                 "--eval-workers", str(scale.eval_workers)]
        if scale.horizon:
            args += ["--eval-horizon", str(scale.horizon)]
    else:
        args += ["--eval-every", "0"]
    configs, rest = split_configs(extra)
    return tuple(args + ["--resume", "auto", *configs, *condition, *rest])


def split_configs(flags: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(the --config NAME pairs, the other flags)`` of ``flags``, each in their order."""
    configs, rest, it = [], [], iter(flags)
    for f in it:
        if f == "--config":
            configs += [f, next(it, "")]
        elif f.startswith("--config="):
            configs.append(f)
        else:
            rest.append(f)
    return configs, rest


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def base_parser(experiment: str, description: str, scales: dict[str, Scale]) -> argparse.ArgumentParser:
    """The options every study script has (the script adds its own)."""
    epilog = "scales:\n" + "\n".join(f"  {k}: {v.describe()}; {v.jobs} run(s) at once"
                                      for k, v in scales.items())
    p = argparse.ArgumentParser(prog=f"python -m experiments.{experiment}", description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(scales), default="cpu",
                   help="preset of image size, steps, batch, evaluation, seeds and dataset size (default cpu)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="seeds (default: the scale's)")
    p.add_argument("--out-root", type=Path, default=None, metavar="DIR",
                   help=f"run folders go here (default runs/study/{experiment}/<scale>)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help=f"report folder (default reports/{experiment}/<scale>)")
    p.add_argument("--no-report", action="store_true", help="run only, do not build the report")
    p.add_argument("--data-dir", type=Path, default=Path("data"), metavar="DIR",
                   help="where datasets are found or generated (default data)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and run states only; run nothing")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="train.py processes at once (default: the scale's)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="override the scale's training steps")
    p.add_argument("--image-size", type=int, default=None, metavar="PX", help="override the scale's image size")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="override the scale's batch size")
    p.add_argument("--episodes", type=int, default=None, metavar="N", help="override the scale's dataset episodes")
    p.add_argument("--horizon", type=int, default=None, metavar="N",
                   help="episode limit of generated datasets and evaluation (default: the task's)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="override the scale's evaluation cadence in steps (0: no evaluation)")
    p.add_argument("--eval-episodes", type=int, default=None, metavar="N",
                   help="override the scale's evaluation episodes")
    p.add_argument("--train-args", type=str, default="", metavar="FLAGS",
                   help="extra train.py flags for every run, one quoted string, e.g. '--model.feature_dim 64'")
    p.add_argument("--findings", type=Path, default=None, metavar="FILE",
                   help="markdown with what the runs show (did DR3 help, where not), placed under 'Findings' at "
                        "the top of the report page (the index page when there are several)")
    return p


def add_task_and_kind(p: argparse.ArgumentParser, what: str) -> None:
    """``--task`` and ``--kind`` of a one-dataset experiment, with the project's tasks and dataset kinds."""
    from visual_dr3.envs.tasks import KINDS, TASKS

    p.add_argument("--task", default="lift", choices=list(TASKS), help=f"task of the {what} (default lift)")
    p.add_argument("--kind", default="mixed", choices=list(KINDS), help="dataset kind (default mixed)")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Positive sizes; argparse's one-line error (exit 2) otherwise."""
    for flag in ("jobs", "max_steps", "image_size", "batch_size", "episodes", "horizon", "eval_episodes"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')}: got {v}; expected a positive integer")
    if args.eval_every is not None and args.eval_every < 0:
        p.error(f"--eval-every: got {args.eval_every}; expected an integer >= 0")
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        p.error(f"--seeds: got {args.seeds}; expected distinct integers >= 0")
    try:
        shlex.split(args.train_args)
    except ValueError as e:
        p.error(f"--train-args: {e}")
    if args.findings is not None and not args.findings.is_file():
        p.error(f"--findings {args.findings}: no such file; expected a markdown file")
    if args.findings is not None and not args.findings.read_text(encoding="utf-8").strip():
        p.error(f"--findings {args.findings}: the file is empty; expected the study's findings in markdown")


def roots(args: argparse.Namespace, experiment: str) -> tuple[Path, Path]:
    """(run root, report folder) with the defaults ``runs/study/<experiment>/<scale>``, ``reports/<...>``."""
    out_root = args.out_root if args.out_root is not None else Path("runs/study") / experiment / args.scale
    report = args.report if args.report is not None else Path("reports") / experiment / args.scale
    return Path(out_root), Path(report)


def fmt_coef(c: float) -> str:
    """c0 in folder names: 0 -> ``0``, 0.001 -> ``0.001``, 1e-05 -> ``1e-05``."""
    return f"{c:g}"
