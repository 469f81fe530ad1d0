"""Shared machinery of the DR3 study scripts (``experiments/*.py``): scale presets, datasets, run planning,
skip/resume, running ``train.py`` as subprocesses, and the report at the end.

A study script builds a list of :class:`RunSpec` (one ``train.py`` command per condition x seed) with a pure
function, then :func:`main_flow` generates the missing datasets, runs what is not finished yet and calls
:func:`visual_dr3.report.build_report` on the run folders. Every run folder gets

- ``train.log``: the run's stdout and stderr (appended to on every attempt),
- ``experiment.json``: written when ``train.py`` ends with 0 (``status: done``) or 3 (``status: diverged``),
  with the steps and the command; a run whose marker covers the planned ``--max-steps`` is skipped.

Every command carries ``--resume auto``: an interrupted run (SIGINT/SIGTERM, crash, killed machine) continues
from its ``checkpoints/last.ckpt``; a run that never started starts fresh (``train.py`` keeps the
``metrics.csv`` rows logged before the checkpoint it resumes from).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO_ROOT / "train.py"
CONFIG_DIR = REPO_ROOT / "configs" / "experiments"
MARKER = "experiment.json"
LOG = "train.log"
EXIT_DIVERGED = 3  # train.py's exit code when training stopped on non-finite values
EXIT_SIGNALS = (130, 143)  # train.py stopped by SIGINT / SIGTERM after saving last.ckpt


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
               condition: Sequence[str] = (), extra: Sequence[str] = (), preset: str = "gpu") -> tuple[str, ...]:
    """``train.py`` flags of one run: the experiment's ``--config`` first (flags after it override it), then
    the scale's flags, the condition's flags and the user's ``--train-args``. The DR3 studies set their scale
    themselves and pin train.py's base preset (``--preset gpu``: configs/<task>.yaml without the cpu overlay);
    the learning recipe's study passes the preset it measures."""
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
    return tuple(args + ["--resume", "auto", *condition, *extra])


def run_state(out_dir: Path, max_steps: int) -> str:
    """``done`` / ``diverged`` (marker covering ``max_steps``), ``partial`` (a run folder to resume) or ``new``."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if marker.is_file():
        try:
            m = json.loads(marker.read_text())
            if m.get("status") in ("done", "diverged") and int(m.get("max_steps", -1)) >= max_steps:
                return m["status"]
        except (OSError, ValueError, TypeError):
            pass
    if (out_dir / "checkpoints" / "last.ckpt").is_file() or (out_dir / "config.yaml").is_file():
        return "partial"
    return "new"


def write_marker(run: RunSpec, status: str, seconds: float) -> None:
    from visual_dr3.fileio import write_text_atomic

    doc = {"status": status, "max_steps": run.max_steps, "seconds": round(seconds, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(run.command())}
    write_text_atomic(Path(run.out_dir) / MARKER, json.dumps(doc, indent=2) + "\n")


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


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def say(line: str) -> None:
    print(line, flush=True)


def _display(cmd: Sequence[str]) -> str:
    """A command as one shell line, ``python`` for this interpreter and the repo's paths made relative."""
    cwd = Path.cwd().resolve()
    out = []
    for i, tok in enumerate(cmd):
        if i == 0 and tok == sys.executable:
            out.append("python")
            continue
        p = Path(tok)
        if p.is_absolute():
            try:
                tok = str(p.relative_to(cwd))
            except ValueError:
                pass
        out.append(tok)
    return shlex.join(out)


def ensure_datasets(datasets: Sequence[DatasetSpec], workers: int, dry_run: bool) -> None:
    """Generate each missing dataset (once, in order); an existing file is used as it is, unless an older
    version of the scripted policies made it."""
    from visual_dr3.data.generate import made_by_older_script

    seen: set[Path] = set()
    for d in datasets:
        if d.path in seen:
            continue
        seen.add(d.path)
        stale = d.path.is_file() and made_by_older_script(d.path)
        if d.path.is_file() and not stale:
            say(f"dataset {d.path}: exists")
            continue
        cmd = d.command(min(workers, os.cpu_count() or 1))
        why = "made by an older scripted policy" if stale else "missing"
        say(f"dataset {d.path}: {why}; {'would generate' if dry_run else 'generating'}: {_display(cmd)}")
        if dry_run:
            continue
        d.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        r = subprocess.run(cmd, env=_child_env())
        if r.returncode != 0 or not d.path.is_file():
            raise SystemExit(f"error: dataset generation failed (exit {r.returncode}): {_display(cmd)}")
        say(f"dataset {d.path}: written in {time.time() - t0:.0f} s")


def _child_env(jobs: int = 1) -> dict:
    """The environment of a study's child process; with several runs at once each gets its share of the cores."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def _log_tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in lines[-n:])


@dataclass
class Result:
    """What became of one planned run."""

    run: RunSpec
    status: str  # done, diverged, skipped-done, skipped-diverged, failed (exit N), stopped, not started
    seconds: float = 0.0


class Runner:
    """Runs the planned runs (``jobs`` at a time), skipping finished ones.

    Each ``train.py`` runs in its own session, so a Ctrl-C or SIGTERM reaches this script only; it forwards the
    signal once to every running ``train.py`` (which finishes its step, saves ``last.ckpt`` and exits) and
    starts no further run. A second Ctrl-C is forwarded too (``train.py`` then exits at once)."""

    def __init__(self, runs: Sequence[RunSpec], jobs: int = 1):
        self.runs = list(runs)
        self.jobs = max(1, jobs)
        self.stop = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def signal_children(self, signum: int) -> None:
        """Stop scheduling and send ``signum`` to every running ``train.py``."""
        self.stop.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _one(self, i: int, run: RunSpec) -> Result:
        n = len(self.runs)
        state = run_state(run.out_dir, run.max_steps)
        if state in ("done", "diverged"):
            say(f"[{i}/{n}] skip {run.out_dir} ({state})")
            return Result(run, f"skipped-{state}")
        if self.stop.is_set():
            return Result(run, "not started")
        out = Path(run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        verb = "resume" if state == "partial" else "start"
        say(f"[{i}/{n}] {verb} {out}  (log: {out / LOG})")
        t0 = time.time()
        with open(out / LOG, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {_display(run.command())}\n")
            log.flush()
            with self._lock:
                if self.stop.is_set():
                    return Result(run, "not started")
                proc = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT, env=_child_env(self.jobs),
                                        start_new_session=True)
                self._procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        dt = time.time() - t0
        if rc == 0:
            write_marker(run, "done", dt)
            status = "done"
        elif rc == EXIT_DIVERGED:
            write_marker(run, "diverged", dt)
            status = "diverged"
        elif rc in EXIT_SIGNALS or rc < 0:
            status = "stopped"
        else:
            status = f"failed (exit {rc})"
        say(f"[{i}/{n}] {status}: {out} in {dt:.0f} s")
        if status.startswith("failed") or status == "diverged":
            say(_log_tail(out / LOG))
        return Result(run, status, dt)

    def run_all(self) -> list[Result]:
        """Run everything; Ctrl-C / SIGTERM are forwarded to the running ``train.py`` processes."""
        old = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, lambda signum, frame: self._forward(signum))
        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                futures = [pool.submit(self._one, i + 1, r) for i, r in enumerate(self.runs)]
                results = []
                for f in futures:
                    while True:
                        try:
                            results.append(f.result())
                            break
                        except KeyboardInterrupt:
                            self._forward(signal.SIGINT)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, old)
        return results

    def _forward(self, signum: int) -> None:
        say(f"{signal.Signals(signum).name}: no new runs; the running train.py processes save "
            f"checkpoints/last.ckpt and stop (rerun the same command to continue)")
        self.signal_children(signum)


def dry_run(runs: Sequence[RunSpec]) -> None:
    for i, r in enumerate(runs):
        state = run_state(r.out_dir, r.max_steps)
        say(f"[{i + 1}/{len(runs)}] {state}: {_display(r.command())}")


def summarize(results: Sequence[Result]) -> int:
    """Print the summary table; the exit code (1 if any run failed or was stopped, else 0)."""
    say("\n== study summary ==")
    for r in results:
        say(f"  {r.status:18s} {str(r.run.out_dir):50s} {r.seconds:8.0f} s")
    bad = [r for r in results if r.status.startswith("failed") or r.status in ("stopped", "not started")]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    say("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if bad:
        say("  rerun the same command to continue the unfinished runs (they resume from checkpoints/last.ckpt)")
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSpec:
    """One report page over some of the runs: ``build_report(run dirs, out, title, group_by)``."""

    out: Path
    title: str
    runs: tuple[RunSpec, ...]
    group_by: Optional[str] = None
    name: str = ""  # section name on the index page when an experiment has several reports


def build_reports(reports: Sequence[ReportSpec], index: Optional[Path] = None, index_title: str = "",
                  dry_run: bool = False, findings: Optional[Path] = None) -> list[Path]:
    """Build each report from its run folders that hold ``config.yaml`` and ``metrics.csv``; with ``index``,
    also a page linking them with their tables. The markdown file ``findings`` goes on the index page, or on
    the report page when there is no index. Returns the pages written."""
    pages = []
    sections = []
    for rep in reports:
        dirs = [str(r.out_dir) for r in rep.runs]
        if dry_run:
            say(f"report {rep.out}: would build from {len(dirs)} run folders (group by {rep.group_by})")
            continue
        ready = [d for d in dirs if (Path(d) / "config.yaml").is_file() and (Path(d) / "metrics.csv").is_file()]
        for d in dirs:
            if d not in ready:
                say(f"report {rep.out}: leaving out {d} (no config.yaml or metrics.csv yet)")
        if not ready:
            say(f"report {rep.out}: no finished run folder; nothing to report")
            continue
        from visual_dr3.errors import UserError
        from visual_dr3.report import build_report

        try:
            res = build_report(ready, str(rep.out), title=rep.title, group_by=rep.group_by, verbose=False,
                               findings=findings if index is None else None)
        except UserError as e:
            say(f"report {rep.out}: error: {e}")
            continue
        say(f"report {res['page']}: {len(ready)} runs, {len(res['conditions'])} conditions, "
            f"{len(res['plots'])} plots")
        pages.append(Path(res["page"]))
        sections.append((rep, res))
    if index is not None and sections and not dry_run:
        from visual_dr3.report import read_findings

        text = read_findings(str(findings)) if findings is not None else None
        pages.append(write_index(index, index_title, sections, text))
    return pages


def write_index(out: Path, title: str, sections: Sequence[tuple[ReportSpec, dict]],
                findings: Optional[str] = None) -> Path:
    """``<out>/index.md``: the experiment's title, the findings, and per report a link to its page and its
    table."""
    from visual_dr3.fileio import write_text_atomic
    from visual_dr3.report.page import table

    lines = [f"# {title}", ""]
    if findings:
        lines += ["## Findings", "", findings.strip(), ""]
    for rep, res in sections:
        rel = os.path.relpath(Path(res["page"]).resolve(), Path(out).resolve())
        lines += [f"## {rep.name or rep.title}", "", f"[{rep.title}]({Path(rel).as_posix()})", ""]
        lines += table(res["summaries"]) + [""]
    return write_text_atomic(Path(out) / "index.md", "\n".join(lines))


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


def fmt_coef(c: float) -> str:
    """c0 in folder names: 0 -> ``0``, 0.001 -> ``0.001``, 1e-05 -> ``1e-05``."""
    return f"{c:g}"
