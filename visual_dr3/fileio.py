"""File helpers shared by every writer: writable-folder checks and atomic writes.

Every file the project writes (checkpoints, datasets, metrics, configs, reports, plots, videos) goes through
:func:`atomic_path`: the writer fills a temporary file in the target's folder, which is then fsynced and
renamed over the target (and the folder fsynced, so the rename itself survives a crash). A reader, a crash
or a Ctrl-C sees the old file or the new one, never a half-written one; on any error the temporary file is
removed and the old file is left as it was. A write the machine refuses (full disk, read-only folder, file
too large: :data:`NO_ROOM`) becomes a one-line :class:`WriteError` naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Iterator

from visual_dr3.errors import UserError

#: errors of a write that the machine refuses (no room, read-only, not permitted, file too large): the user's to fix
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


class WriteError(UserError):
    """A file could not be written (disk full, read-only folder, ...): one line naming it, exit 2; the previous
    complete file, if any, is left as it was."""


def write_error(path: "str | os.PathLike", e: BaseException) -> "WriteError | None":
    """The one-line :class:`WriteError` for ``e`` raised while writing ``path`` when ``e`` is one of
    :data:`NO_ROOM` (by errno, or by its text for writers that only pass the message on: HDF5, ffmpeg);
    None otherwise."""
    code = None
    seen = set()
    while e is not None and id(e) not in seen and code is None:  # torch raises its own error from the OSError
        seen.add(id(e))
        code = getattr(e, "errno", None) if getattr(e, "errno", None) in NO_ROOM else None
        if code is None:
            text = str(e)
            code = next((c for c in NO_ROOM if os.strerror(c) in text or f"errno = {c}," in text), None)
        e = e.__cause__ or e.__context__
    if code is None:
        code = _folder_refuses(Path(path).parent)
    if code is None:
        return None
    return WriteError(f"{path}: cannot be written ({os.strerror(code)}); the previous file, if any, is unchanged "
                      f"(free some space or choose a writable folder, then run again)")


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


def temp_path_for(path: "str | os.PathLike", keep_suffix: bool = False) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.tmp.<pid>.<hex>`` (``.gitignore`` matches
    ``.*.tmp.*``), so a ``glob("*.ckpt")`` or ``glob("*.hdf5")`` never picks up a file being written. With
    ``keep_suffix`` it is ``.<stem>.tmp.<pid>.<hex><suffix>``, for writers that choose a format by extension
    (ffmpeg)."""
    path = Path(path)
    tag = f"tmp.{os.getpid()}.{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}.{tag}{path.suffix}" if keep_suffix else f".{path.name}.{tag}")


def commit(tmp: "str | os.PathLike", path: "str | os.PathLike") -> Path:
    """fsync ``tmp``, rename it over ``path`` and fsync the folder so that the rename is durable too."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dfd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems cannot fsync a folder; the rename has happened
        pass
    return Path(path)


def _folder_refuses(folder: Path) -> "int | None":
    """ENOSPC when ``folder``'s file system has (almost) no room left, EROFS when it is mounted read-only: for
    writers whose error carries no errno (torch's "unexpected pos", ffmpeg's broken pipe)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < (1 << 20):
        return errno.ENOSPC
    return None


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike", keep_suffix: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write ``tmp`` (any writer, by name); on a clean exit it becomes ``p``
    (:func:`commit`), on an exception (or Ctrl-C) it is removed and ``p`` is untouched. ``keep_suffix``: see
    :func:`temp_path_for`."""
    path = Path(path)
    tmp = temp_path_for(path, keep_suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        commit(tmp, path)
    except (OSError, RuntimeError) as e:
        err = write_error(path, e)
        if err is None:
            raise
        raise err from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text_atomic(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: "str | os.PathLike", obj) -> Path:
    """Write ``obj`` as indented JSON atomically; non-finite floats become null, numpy/torch scalars numbers."""
    import json

    return write_text_atomic(path, json.dumps(_json_safe(obj), indent=1) + "\n")


def _json_safe(obj):
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _json_safe(obj.item())
    return obj
