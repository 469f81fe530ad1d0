"""Running a DR3 study's plan: datasets, ``train.py`` subprocesses, skip/resume states and the summary.

:func:`ensure_datasets` generates the missing datasets; :class:`Runner` runs the planned ``train.py``
commands (``jobs`` at a time, each in its own session, Ctrl-C / SIGTERM forwarded once) and skips finished
ones by their :func:`run_state`. Every run folder gets

- ``train.log``: the run's stdout and stderr (appended to on every attempt),
- ``experiment.json``: written when ``train.py`` ends with 0 having logged its last step (``status: done``) or
  3 (``status: diverged``),
  with the steps and the command; a run whose marker covers the planned ``--max-steps`` is skipped.

Every command carries ``--resume auto``: an interrupted run (SIGINT/SIGTERM, crash, killed machine) continues
from its ``checkpoints/last.ckpt``; a run that never started starts fresh (``train.py`` keeps the
``metrics.csv`` rows logged before the checkpoint it resumes from). :func:`summarize` prints the outcome.
"""

from __future__ import annotations

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
from typing import Sequence

from experiments.plan import DatasetSpec, RunSpec
from visual_dr3 import errors
from visual_dr3.errors import EXIT_DIVERGED, EXIT_INTERRUPTED

MARKER = "experiment.json"
LOG = "train.log"
EXIT_SIGNALS = (EXIT_INTERRUPTED, 143)  # train.py stopped by SIGINT / SIGTERM after saving last.ckpt


# --------------------------------------------------------------------------------------------------
# run states
# --------------------------------------------------------------------------------------------------
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


def last_logged_step(out_dir: Path) -> int:
    """The largest ``step`` in the run's ``metrics.csv`` (-1 when there is none): a finished run of ``max_steps``
    logged its last training step, ``max_steps - 1`` (``LogLastStep``)."""
    import csv

    try:
        with open(Path(out_dir) / "metrics.csv", newline="") as f:
            return max((int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")), default=-1)
    except (OSError, ValueError, KeyError):
        return -1


def write_marker(run: RunSpec, status: str, seconds: float) -> None:
    from visual_dr3.fileio import write_text_atomic

    doc = {"status": status, "max_steps": run.max_steps, "seconds": round(seconds, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(run.command())}
    write_text_atomic(Path(run.out_dir) / MARKER, json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
def say(line: str) -> None:
    """A study's progress line, on stdout (it is the study's log)."""
    errors.say(line, stdout=True)


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
        last = last_logged_step(out) if rc == 0 else None
        if last is not None and last < run.max_steps - 1:
            # exit 0 short of max_steps is not done, whatever the cause (an older train.py ended a forced stop by
            # a second signal with 0): --resume auto continues it on the next pass
            say(f"[{i}/{n}] {out}: train.py exited 0 at logged step {last} of {run.max_steps}")
            status = "stopped"
        elif rc == 0:
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
