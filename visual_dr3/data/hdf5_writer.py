"""Write datasets in robomimic's HDF5 layout (see docs/INTERFACES.md), atomically.

The file is written to a temporary name in the target's folder (``.<name>.tmp.<pid>.<random>``, which
``.gitignore`` matches), flushed, then fsynced and renamed onto the target (``visual_dr3.fileio.commit``). If anything fails
before that, the temporary file is removed and a file already at the target is left untouched.

Layout::

    data            attrs: total, env_args (JSON), visual_dr3 (JSON metadata)
    data/demo_<i>   attrs: num_samples, model_file (+ ours: success, sigma, role, seed)
        actions (T,A) float32   rewards (T,) float32   dones (T,) int64   states (T,S) float64
        obs/<camera>_image (T,H,W,3) uint8, chunks (1,H,W,3), compressed
        obs/<proprio key>  (T,D) float64
    mask/<key>      demo names as bytes (train, valid; cog: prior, task)

Image compression: gzip level 4, one frame per chunk. Measured on 2,018 frames of 84x84x3 robosuite
images (12 lift episodes, two cameras; 42.7 MB raw), loading every dataset into memory, page cache warm:

    none      42.9 MB  0.044 s
    lzf       22.0 MB  0.19 s
    gzip 1    15.8 MB  0.26 s
    gzip 4    14.1 MB  0.24 s   <- chosen: 36% smaller than lzf for ~25% longer loads (~2 s more per
    gzip 9    13.7 MB  (writes 3.5x slower than gzip 4)                   100k frames)

Writing costs ~0.45 ms a frame with gzip 4, nothing next to rendering (~13 ms a frame).

Every dataset carries HDF5's Fletcher-32 checksum (per chunk), the file's metadata its own checksums
(``libver="latest"``) and the text attributes (kept as robomimic's variable-length strings, in HDF5's global
heap, which has none) one CRC32 (:data:`ATTRS_CRC`), so a byte altered anywhere is a read error (a one-line
error naming the file), never a silently different action, image or env description. A full disk or a
read-only folder while writing is a one-line :class:`~visual_dr3.fileio.WriteError` naming the dataset; the
temporary file is removed.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from visual_dr3.errors import UserError
from visual_dr3.fileio import commit, temp_path_for, write_error

#: ``data`` attribute: CRC32 of every text attribute (HDF5 keeps variable-length strings in its global heap,
#: which carries no checksum of its own)
ATTRS_CRC = "visual_dr3_attrs_crc32"
#: version of our metadata (``data.attrs['visual_dr3']``)
FORMAT_VERSION = 1
IMAGE_COMPRESSION = "gzip"
IMAGE_COMPRESSION_OPTS = 4
ATTR_KEYS = ("task", "kind", "image_size", "cameras", "proprio_keys", "seed", "render", "episodes", "version")


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_writable(path: "str | os.PathLike") -> Path:
    """The output path, with its folder created if missing; UserError if it cannot be written there."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise UserError(f"--out: {out} is a folder; expected a file path such as {out / 'dataset.hdf5'}")
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out: cannot create folder {folder} ({e.strerror}); expected a writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out: folder {folder} is not writable; expected a writable folder")
    return out


class DatasetWriter:
    """Stream demos into a robomimic-layout file; the target appears only when :meth:`commit` succeeds.

    Use as a context manager::

        with DatasetWriter(path, env_args, meta) as w:
            w.add_demo(actions=..., rewards=..., dones=..., states=..., obs={...}, model_file=xml)
            w.set_mask("train", [...])
        # committed on a clean exit, discarded (temp file removed) on an exception
    """

    def __init__(self, path: "str | os.PathLike", env_args: Mapping, meta: Mapping,
                 image_compression: str | None = IMAGE_COMPRESSION,
                 image_compression_opts: int | None = IMAGE_COMPRESSION_OPTS):
        self.path = Path(path)
        self.env_args = dict(env_args)
        self.meta = dict(meta)
        self.image_compression = image_compression
        # compression_opts is gzip's level; lzf takes none
        self.image_compression_opts = image_compression_opts if image_compression == "gzip" else None
        self.tmp_path = temp_path_for(self.path)
        self._file: h5py.File | None = h5py.File(self.tmp_path, "w", libver="latest")
        self._data = self._file.create_group("data")
        self._masks: dict[str, list[str]] = {}
        self.num_demos = 0
        self.total = 0
        self.committed = False

    # -- context manager ------------------------------------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and not self.committed:
            self.commit()
        elif exc_type is not None:
            self.abort()
            err = write_error(self.path, exc) if isinstance(exc, (OSError, RuntimeError)) else None
            if err is not None:  # a full disk, a read-only folder: one line naming the dataset
                raise err from None
        return False

    # -- writing --------------------------------------------------------------------------------------
    def add_demo(self, actions, rewards, dones, states, obs: Mapping[str, np.ndarray],
                 model_file: str = "", next_obs: Mapping[str, np.ndarray] | None = None,
                 attrs: Mapping[str, Any] | None = None) -> str:
        """Append ``demo_<i>`` (i = number of demos so far); returns its name."""
        if self._file is None:
            raise RuntimeError("writer is closed")
        actions = np.asarray(actions, dtype=np.float32)
        T = int(actions.shape[0])
        if T < 1 or actions.ndim != 2:
            raise ValueError(f"actions must be (T>=1, A); got {actions.shape}")
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        dones = np.asarray(dones, dtype=np.int64).reshape(-1)
        states = np.asarray(states, dtype=np.float64)
        for name, arr in (("rewards", rewards), ("dones", dones), ("states", states)):
            if arr.shape[0] != T:
                raise ValueError(f"{name} has {arr.shape[0]} rows; actions have {T}")
        name = f"demo_{self.num_demos}"
        g = self._data.create_group(name)
        g.create_dataset("actions", data=actions, fletcher32=True)
        g.create_dataset("rewards", data=rewards, fletcher32=True)
        g.create_dataset("dones", data=dones, fletcher32=True)
        g.create_dataset("states", data=states, fletcher32=True)
        self._write_obs(g.create_group("obs"), obs, T)
        if next_obs is not None:
            self._write_obs(g.create_group("next_obs"), next_obs, T)
        g.attrs["num_samples"] = T
        g.attrs["model_file"] = model_file
        for k, v in (attrs or {}).items():
            g.attrs[k] = v
        self.num_demos += 1
        self.total += T
        return name

    def _write_obs(self, group: h5py.Group, obs: Mapping[str, np.ndarray], T: int) -> None:
        for key, value in obs.items():
            arr = np.asarray(value)
            if arr.shape[0] != T:
                raise ValueError(f"obs/{key} has {arr.shape[0]} rows; actions have {T}")
            if arr.ndim == 4 and arr.dtype == np.uint8:  # images (T, H, W, C)
                group.create_dataset(
                    key, data=arr, chunks=(1,) + arr.shape[1:],
                    compression=self.image_compression, compression_opts=self.image_compression_opts,
                    fletcher32=True,
                )
            else:
                group.create_dataset(key, data=arr, fletcher32=True)

    def set_mask(self, key: str, demo_names: Iterable[str]) -> None:
        """``mask/<key>``: a filter key (robomimic's ``filter_by_attribute``), written at commit."""
        self._masks[key] = [str(n) for n in demo_names]

    # -- finishing --------------------------------------------------------------------------------------
    def commit(self) -> Path:
        """Write the file-level attrs and masks, fsync, and move the file onto the target path."""
        if self._file is None:
            raise RuntimeError("writer is closed")
        try:
            meta = {k: self.meta.get(k) for k in ATTR_KEYS}
            meta.update({k: v for k, v in self.meta.items() if k not in meta})
            meta["version"] = self.meta.get("version", FORMAT_VERSION)
            self._data.attrs["total"] = int(self.total)
            self._data.attrs["env_args"] = json.dumps(_to_jsonable(self.env_args))
            self._data.attrs["visual_dr3"] = json.dumps(_to_jsonable(meta))
            mask = self._file.create_group("mask")
            for key, names in self._masks.items():
                mask.create_dataset(key, data=np.array([n.encode("ascii") for n in names], dtype="S"),
                                    fletcher32=True)
            self._data.attrs[ATTRS_CRC] = np.int64(string_attrs_crc(self._file))
            self._file.flush()
            self._file.close()
            self._file = None
            commit(self.tmp_path, self.path)
        except BaseException as e:
            self.abort()
            err = write_error(self.path, e) if isinstance(e, (OSError, RuntimeError)) else None
            if err is not None:
                raise err from None
            raise
        self.committed = True
        return self.path

    def abort(self) -> None:
        """Discard everything written: close and remove the temporary file (the target is untouched)."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


def string_attrs_crc(f: h5py.File) -> int:
    """CRC32 of every text attribute in ``f`` (path, name, value; sorted), but :data:`ATTRS_CRC` itself."""
    items = []

    def visit(name: str, obj) -> None:
        for k, v in obj.attrs.items():
            if k != ATTRS_CRC and isinstance(v, (str, bytes)):
                items.append((name, k, v.encode("utf-8") if isinstance(v, str) else bytes(v)))

    visit("/", f)
    f.visititems(visit)
    crc = 0
    for name, k, v in sorted(items):
        crc = zlib.crc32(f"{name}\0{k}\0".encode() + v + b"\0", crc)
    return crc


def verify_string_attrs(path: str, f: h5py.File) -> None:
    """A file of ours whose text attributes (``env_args``, metadata, ``model_file``) do not match their
    checksum is a one-line UserError (files without one, robomimic's, pass)."""
    data = f.get("data")
    if data is None or ATTRS_CRC not in data.attrs:
        return
    if int(data.attrs[ATTRS_CRC]) != string_attrs_crc(f):
        raise UserError(f"{path}: its text attributes fail their checksum (altered or corrupt); expected a "
                        f"complete file")


def read_meta(path: "str | os.PathLike") -> dict:
    """``data.attrs['visual_dr3']`` of a dataset, parsed ({} if absent)."""
    with h5py.File(path, "r") as f:
        raw = f["data"].attrs.get("visual_dr3")
    if raw is None:
        return {}
    return json.loads(raw if isinstance(raw, str) else raw.decode())
