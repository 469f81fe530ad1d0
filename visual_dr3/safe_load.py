"""Loading a checkpoint without running code: :func:`load_weights_only` (the zip records' CRCs checked, then
``torch.load(weights_only=True)`` with the allow-list :func:`allowed_globals`). The base of every checkpoint
reader (:mod:`visual_dr3.checkpoint`, the resume path of :mod:`visual_dr3.learner.resume`), below the learner
so that both can use it. Top-level imports are light (no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from visual_dr3.errors import UserError

#: the command that converts a checkpoint holding more than plain data, once its author is trusted
CONVERT_COMMAND = "python -m visual_dr3.app.convert_checkpoint --trust-this-file {src} {dst}"


def allowed_globals() -> list:
    """What a checkpoint may hold beyond torch's own weights-only set (tensors, dicts, lists, tuples, numbers,
    strings, ``OrderedDict``, torch dtypes and sizes): numpy arrays, dtypes and scalars, which older runs and
    other tools store (e.g. an RNG state or a metric as ``np.float64``). Nothing here runs code when unpickled."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = {type(np.dtype(c)) for c in "?bhilqpBHILQPefdgFDGUSV"}
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *sorted(dtypes, key=str)]


def load_weights_only(path: "str | os.PathLike", flag: str = "--checkpoint", mmap: bool = False):
    """``torch.load`` ``path`` on the CPU with ``weights_only=True`` and :func:`allowed_globals`: unpickling builds
    only plain data and never calls anything else, so a crafted file runs nothing. The zip records' CRC32s are
    checked first (torch does not), so a truncated or altered file is refused, not half-used. Every failure is a
    one-line :class:`UserError` naming ``flag`` and the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {p}: file not found")
    if not p.is_file():
        raise UserError(f"{flag} {p}: not a file")
    _check_archive(p, flag)
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        what = _unsafe_global(str(e))
        if what is None:
            raise UserError(f"{flag} {p}: not a PyTorch checkpoint ({_first_line(e)})") from None
        dst = p.with_name(p.stem + ".converted" + p.suffix)
        raise UserError(f"{flag} {p}: refused, it holds {what}, which is not plain data (tensors, numbers, "
                        f"strings, numpy arrays) and could run code when loaded; nothing of it was run. If you "
                        f"trust its author: {CONVERT_COMMAND.format(src=p, dst=dst)}") from None
    except Exception as e:  # noqa: BLE001  (any failure to read a file is this file's fault: one line)
        raise UserError(f"{flag} {p}: not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _check_archive(p: Path, flag: str) -> None:
    """A torch checkpoint is a zip archive: its central directory must read and every record match its CRC32."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise UserError(f"{flag} {p}: not a PyTorch checkpoint, or truncated or corrupt ({_first_line(e)}); "
                        f"expected a complete file written by train.py") from None
    except Exception as e:  # noqa: BLE001  (a corrupt directory can fail in many ways)
        raise UserError(f"{flag} {p}: truncated or corrupt ({type(e).__name__}: {_first_line(e)}); expected a "
                        f"complete file written by train.py") from None
    if bad is not None:
        raise UserError(f"{flag} {p}: corrupt (record {bad} fails its CRC check); expected a complete file "
                        f"written by train.py")
    with open(p, "rb") as f:  # torch ends the file with the end record, without a comment (zipfile tolerates one)
        f.seek(-22, os.SEEK_END)
        tail = f.read(22)
    if tail[:4] != b"PK\x05\x06" or tail[20:22] != b"\0\0":
        raise UserError(f"{flag} {p}: truncated or corrupt (its zip end record is damaged); expected a complete "
                        f"file written by train.py")


def _unsafe_global(message: str) -> Optional[str]:
    """The global a weights-only load refused, from torch's message (None: not such a refusal)."""
    import re

    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"(?:global|function) [`'\"]?([\w.<>]+)", message)
    return f"'{m.group(1)}'" if m else None


def _first_line(e: BaseException) -> str:
    return " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())[:160]
