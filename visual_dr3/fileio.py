"""Small file helpers shared by the CLIs: writable-folder checks and atomic text writes."""

from __future__ import annotations

import os
from pathlib import Path

from visual_dr3.errors import UserError


def ensure_writable_dir(folder: "str | os.PathLike", flag: str) -> Path:
    """Create ``folder`` if needed and prove it writable; else a one-line UserError naming ``flag``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{flag} {folder}: not writable ({e.strerror or e}); expected a writable folder") from None
    return folder


def write_text_atomic(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` through a temporary file in the same folder, fsync, then rename over ``path``.

    A reader (or a crash) sees the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
