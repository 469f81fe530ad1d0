"""One-line user errors and the CLI wrapper that turns them into `error: ...` with exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input (file, key, flag): printed as one line, no traceback, exit 2.

    The message names the file, key or flag and what was expected, e.g.
    ``data/x.hdf5: obs key 'agentview_image' missing in demo_3 (have: robot0_eef_pos, ...)``.
    """


def cli_entry(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI ``main``: a :class:`UserError` becomes ``error: <message>`` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            msg = " ".join(str(e).split("\n"))
            print(f"error: {msg}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE) from None

    return wrapper
