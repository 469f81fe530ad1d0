"""What the user reads: one-line user errors, the CLI wrapper that turns them into `error: ...` with exit code 2
(and Ctrl-C into one line with exit code 130), the exit codes, and :func:`say`, the one way to print a line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

#: exit code of bad input (a UserError)
EXIT_USAGE = 2
#: exit code of training stopped on non-finite values (train.py)
EXIT_DIVERGED = 3
#: exit code of a multi-process run ended because one of its ranks died (train.py; see visual_dr3.app.ranks)
EXIT_RANK_DIED = 4
#: exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it
EXIT_INTERRUPTED = 130


def command_name(script: str) -> str:
    """The name the user typed for this command, for ``--help`` and messages: the installed console script's
    (``visual-dr3-train``, see :mod:`visual_dr3.app.console`) when that started the process, else ``script``
    (``train.py``, ``python -m visual_dr3.report``)."""
    import os

    ran = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return ran if ran.startswith("visual-dr3-") else script


def say(line: str, stdout: bool = False) -> None:
    """Print one line for the user, on stderr (``stdout=True``: on stdout), above any live tqdm progress bar."""
    stream = sys.stdout if stdout else sys.stderr
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover  (tqdm is a dependency)
        print(line, file=stream, flush=True)
        return
    tqdm.write(line, file=stream)
    stream.flush()


class UserError(Exception):
    """A problem with the user's input (file, key, flag): printed as one line, no traceback, exit 2.

    The message names the file, key or flag and what was expected, e.g.
    ``data/x.hdf5: obs key 'agentview_image' missing in demo_3 (have: robot0_eef_pos, ...)``.
    """


def cli_entry(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI ``main``: a :class:`UserError` becomes ``error: <message>`` on stderr and exit 2; Ctrl-C
    (KeyboardInterrupt) becomes one line and exit 130, without a traceback (files being written are removed by
    their writers on the way out)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            say("error: " + " ".join(str(e).split("\n")))
            raise SystemExit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            say("\ninterrupted (Ctrl-C)")
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper


_CTRL_C = threading.Event()


@contextlib.contextmanager
def remembered_ctrl_c() -> Iterator[None]:
    """While inside, the first Ctrl-C only sets a flag, and :func:`raise_if_ctrl_c` raises KeyboardInterrupt at the
    next safe point (the caller checks between units of work). A KeyboardInterrupt raised by the signal itself
    lands wherever Python is: inside a library's bare ``except`` or a ``__del__`` or weakref callback it is lost
    ("Exception ignored" and a traceback on stderr). A second Ctrl-C raises at once. Only in the main thread, and
    only where SIGINT has Python's default handler (ignored or someone else's: left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        if _CTRL_C.is_set():
            raise KeyboardInterrupt
        _CTRL_C.set()

    _CTRL_C.clear()
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _CTRL_C.clear()


def raise_if_ctrl_c() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came inside :func:`remembered_ctrl_c` (a safe point to stop at)."""
    if _CTRL_C.is_set():
        raise KeyboardInterrupt


def polled(results, every: float = 0.2):
    """Iterate a ``multiprocessing`` ``imap`` result, calling :func:`raise_if_ctrl_c` at least every ``every``
    seconds while waiting for the next item."""
    import multiprocessing

    while True:
        try:
            item = results.next(timeout=every)
        except multiprocessing.TimeoutError:
            raise_if_ctrl_c()
            continue
        except StopIteration:
            return
        yield item


class OneLineParser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flag, bad type) are one-line UserErrors (exit 2 through :func:`cli_entry`)."""

    def error(self, message: str):
        raise UserError(" ".join(message.split()))
