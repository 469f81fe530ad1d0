"""A DDP rank that dies (killed, out of memory, crashed) ends the run within seconds with one line.

Without this, the surviving ranks fail in their next collective with some 95 lines of gloo tracebacks
("Connection reset by peer"), or, when rank 0 is busy outside a collective (evaluating), Lightning's child
observer SIGKILLs everything silently. Here:

- rank 0 (the process the user started, which launched the other local ranks) watches its children
  (:class:`RankWatch`, a thread polling every 0.2 s): a child ended by a signal is reported at once, and the
  run ends with :data:`~visual_dr3.errors.EXIT_RANK_DIED`;
- a collective that fails because a peer is gone (:func:`peer_lost`) is reported the same way from the main
  thread (:func:`handle_fit_error`, from the callback's ``on_exception``, before Lightning's teardown, which
  would try collectives with the dead rank), by rank 0 when it knows which child died, by rank 1 when rank 0 itself is
  gone; any other rank exits silently (the line is printed once).

The line names the rank, how it ended (signal or exit status), the step reached, the last checkpoint's step
and the command that resumes. Checkpoints are written atomically, so the last one is whole whatever the
moment of the death; a temporary file this process was writing is removed.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from visual_dr3.errors import EXIT_RANK_DIED, say

#: words of the errors a collective raises when a peer process is gone (gloo, NCCL, the TCP store)
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
             "connection closed", "NCCL communicator was aborted", "Socket Timeout", "recv failed")

_reported = threading.Lock()
_printed = threading.Event()  # set once the one line is out


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank is gone (not this rank's own error)."""
    try:
        import torch.distributed as dist

        if isinstance(e, getattr(dist, "DistNetworkError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(e)
    return isinstance(e, RuntimeError) and any(w in text for w in PEER_LOST)


def how(returncode: int) -> str:
    """``killed by SIGKILL`` or ``exited with status 1`` for a Popen return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def resume_command(argv: Optional[list] = None) -> str:
    """This run's command line with ``--resume auto`` (any ``--resume X`` / ``--overwrite X`` dropped)."""
    argv = list(sys.argv if argv is None else argv)
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--overwrite"):
            skip = True
            continue
        if a.startswith(("--resume=", "--overwrite=")):
            continue
        out.append(a)
    return "python " + shlex.join(out + ["--resume", "auto"])


def last_checkpoint(out: Path) -> str:
    """``checkpoints/last.ckpt (step N)`` of the run folder, read safely; or that there is none."""
    last = Path(out) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "no checkpoint was written yet"
    from visual_dr3.checkpoint import load_weights_only
    from visual_dr3.errors import UserError

    try:
        step = int(load_weights_only(last, flag="last", mmap=True).get("global_step", -1))
    except UserError:
        return f"{last} does not load"
    return f"last checkpoint {last} (step {step})"


def _remove_own_temp_files(out: Path) -> None:
    """Temporary checkpoint files this process was writing (``.<name>.tmp.<pid>.*``): the target stays whole."""
    for p in (Path(out) / "checkpoints").glob(f".*.tmp.{os.getpid()}.*"):
        try:
            p.unlink()
        except OSError:
            pass


def report(who: str, ended: str, step: Optional[int], out: Path) -> None:
    """Print the one line (once per process). A second caller (the watcher thread and the main thread can both
    see the death) waits until the first has printed, so that neither leaves the process before the line is out."""
    if not _reported.acquire(blocking=False):
        _printed.wait(timeout=30.0)
        return
    try:
        at = f" at step {step}" if step is not None else ""
        say(f"error: {who} {ended}{at}; {last_checkpoint(out)}; continue with: {resume_command()}")
    finally:
        _printed.set()


class RankWatch:
    """Rank 0's watcher of the ranks it launched: a child ended by a signal ends the run at once (one line)."""

    def __init__(self, trainer, out: Path, period: float = 0.2):
        self.trainer, self.out, self.period = trainer, Path(out), period
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="visual-dr3-rank-watch", daemon=True)

    @staticmethod
    def children(trainer) -> list:
        return list(getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or [])

    def start(self) -> "RankWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def dead_child(self) -> Optional[tuple[int, object]]:
        """``(rank, proc)`` of a launched rank that has ended with a non-zero status, signals first."""
        procs = self.children(self.trainer)
        for p in procs:
            p.poll()
        ended = [(i + 1, p) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        ended.sort(key=lambda rp: rp[1].returncode >= 0)  # killed by a signal before exited with an error
        return ended[0] if ended else None

    def _run(self) -> None:
        while not self.stopped.wait(self.period):
            found = self.dead_child()
            if found is None or found[1].returncode >= 0:  # an error exit: that rank prints its own error
                continue
            if _stopping(self.trainer):  # a second Ctrl-C / SIGTERM killed the ranks on purpose
                return
            self.end(*found)

    def end(self, rank: int, proc) -> None:
        """Report ``rank``'s death, kill the other launched ranks and leave at once (no traceback, no hang)."""
        report(f"rank {rank} (pid {proc.pid})", how(proc.returncode), _step(self.trainer), self.out)
        for p in self.children(self.trainer):
            if p.poll() is None:
                p.kill()
        _remove_own_temp_files(self.out)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_RANK_DIED)


def _callback_base():
    from lightning.pytorch.callbacks import Callback

    return Callback


class WatchRanks(_callback_base()):
    """Starts :class:`RankWatch` on rank 0 once Lightning has launched the other ranks; stops it at the end."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.watch: Optional[RankWatch] = None
        self.parent_pid = os.getppid()  # for a launched rank: rank 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero and RankWatch.children(trainer) and self.watch is None:
            self.watch = RankWatch(trainer, self.out).start()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.watch is not None:
            self.watch.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        handle_fit_error(exception, trainer, self.out, self.watch, self.parent_pid, trainer.global_rank)
        if self.watch is not None:  # rank 0's own error (a full disk, ...): its line is the one; end the others
            self.watch.stop()      # now, before they find rank 0 gone and report that instead
            for p in RankWatch.children(trainer):
                if p.poll() is None:
                    p.kill()


def _step(trainer) -> Optional[int]:
    try:
        return int(trainer.global_step)
    except Exception:  # noqa: BLE001
        return None


def _stopping(trainer) -> bool:
    from visual_dr3.learner.callbacks import GracefulStop

    return any(isinstance(c, GracefulStop) and c.received is not None for c in trainer.callbacks)


def handle_fit_error(e: BaseException, trainer, out: Path, watch: Optional[RankWatch], parent_pid: int,
                     rank: int) -> None:
    """Called with an exception out of ``trainer.fit`` in a multi-process run: when it is a lost peer, report
    it in one line (rank 0, or rank 1 when rank 0 is gone) and exit with EXIT_RANK_DIED; otherwise return (the
    caller re-raises)."""
    if not peer_lost(e):
        return
    if rank == 0 and watch is not None:
        deadline = time.time() + 3.0  # the child's exit status arrives just after its sockets close
        while time.time() < deadline:
            found = watch.dead_child()
            if found is not None:
                watch.end(*found)
            time.sleep(0.05)
        report("another rank", f"stopped answering ({' '.join(str(e).split())[:120]})", _step(trainer), out)
    elif rank != 0 and os.getppid() != parent_pid:  # rank 0, which launched this process, is gone
        if rank == 1:
            report(f"rank 0 (pid {parent_pid})", "died (killed or crashed; it launched this rank)", _step(trainer),
                   out)
    else:  # rank 0 is alive: it reports (its watcher sees this rank's peer, or this rank's exit)
        sys.stderr.flush()
        os._exit(EXIT_RANK_DIED)
    _remove_own_temp_files(out)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_RANK_DIED)
