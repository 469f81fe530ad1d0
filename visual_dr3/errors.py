"""One-line user errors and the CLI wrapper that turns them into `error: ...` with exit code 2 (and Ctrl-C into one
line with exit code 130)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

#: exit code of bad input (a UserError)
EXIT_USAGE = 2
#: exit code of training stopped on non-finite values (train.py)
EXIT_DIVERGED = 3
#: exit code of a command stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it
EXIT_INTERRUPTED = 130


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
            msg = " ".join(str(e).split("\n"))
            print(f"error: {msg}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl-C)", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flag, bad type) are one-line UserErrors (exit 2 through :func:`cli_entry`)."""

    def error(self, message: str):
        raise UserError(" ".join(message.split()))
