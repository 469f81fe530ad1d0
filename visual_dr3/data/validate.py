"""Pass 1 of :func:`visual_dr3.data.replay.load_replay`: open, check and plan a robomimic-layout HDF5 file.

Everything that can be known without reading the images is checked here, before any large read, and each
problem becomes a one-line :class:`~visual_dr3.errors.UserError` that names the file, the key (and the
demo where it applies) and what was expected:

- missing file / not a file; not an HDF5 file; truncated or corrupt file;
- no ``data`` group, or no demos in it;
- a filter key (``mask/<key>``) that is missing (the message lists the masks), empty, or names demos that
  ``data`` does not hold;
- per demo: missing ``actions`` / ``rewards`` / ``dones`` / ``obs`` / obs key (the message lists the keys
  the demo has); images that are not uint8 ``(T, H, W, 3)``, cameras of different sizes (within a file or
  across files), or not ``expect_image_size``; an action dimension other than ``action_dim`` (or other than
  the first demo's); lengths of actions / rewards / dones / obs (/ next_obs) that disagree; NaN or inf in
  actions, rewards or proprio; ``dones`` other than 0/1.

The small arrays (actions, rewards, dones, proprio) are read here in full (one contiguous read per dataset
per demo); the images are read in pass 2 by the loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from visual_dr3.errors import UserError

# Imported lazily-cheap; h5py is a hard dependency of the project.
import h5py

REQUIRED_DEMO_KEYS = ("actions", "rewards", "dones")


def natural_key(name: str) -> list:
    """Sort key putting ``demo_2`` before ``demo_10`` (robomimic sorts demos by their integer suffix)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def open_h5(path: str) -> Iterator[h5py.File]:
    """Open ``path`` read-only; missing, non-HDF5, truncated or corrupt files become one-line UserErrors.

    Low-level read errors (``OSError`` / ``RuntimeError`` from HDF5) raised while the file is in use inside
    the ``with`` block are turned into a UserError naming the file as well.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: file not found; expected an HDF5 file in robomimic's layout")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file; expected an HDF5 file in robomimic's layout")
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as e:  # unreadable (permissions, I/O error)
        raise UserError(f"{path}: cannot be read ({first_line(e)}); expected a readable HDF5 file") from None
    if not is_h5:
        raise UserError(f"{path}: not an HDF5 file (no HDF5 signature); expected an HDF5 file in robomimic's layout")
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot be opened as HDF5, the file is truncated or corrupt ({first_line(e)}); "
                        f"expected a complete HDF5 file") from None
    try:
        yield f
    except (OSError, RuntimeError, KeyError, ValueError) as e:  # h5py: KeyError for an object that fails to open
        raise UserError(f"{path}: read failed, the file is truncated or corrupt ({first_line(e)}); "
                        f"expected a complete HDF5 file") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


def parse_json_attr(path: str, group: h5py.Group, name: str) -> dict:
    """``group.attrs[name]`` parsed as JSON (``{}`` when absent)."""
    if name not in group.attrs:
        return {}
    raw = group.attrs[name]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: data.attrs['{name}'] is not valid JSON ({e.msg} at char {e.pos}); "
                        f"expected a JSON object") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: data.attrs['{name}'] is JSON {type(value).__name__}; expected a JSON object")
    return value


def read_mask(path: str, f: h5py.File, filter_key: str, demo_names: set[str]) -> list[str]:
    """Demo names listed in ``mask/<filter_key>`` (stored as bytes, robomimic-style), checked against ``data``."""
    masks = f.get("mask")
    have = sorted(masks.keys()) if isinstance(masks, h5py.Group) else []
    have_txt = ", ".join(have) if have else "none"
    if filter_key not in have:
        raise UserError(f"{path}: filter key 'mask/{filter_key}' missing (have masks: {have_txt}); "
                        f"expected a mask/<key> dataset of demo names")
    ds = masks[filter_key]
    if not isinstance(ds, h5py.Dataset):
        raise UserError(f"{path}: filter key 'mask/{filter_key}' is a group; expected a dataset of demo names")
    raw = np.asarray(ds[()]).reshape(-1)
    names = [x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x) for x in raw.tolist()]
    if not names:
        raise UserError(f"{path}: filter key 'mask/{filter_key}' is empty; expected at least one demo name")
    unknown = [n for n in names if n not in demo_names]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UserError(f"{path}: filter key 'mask/{filter_key}' names demos not in data ({shown}); "
                        f"expected names of data/<demo> groups")
    # Keep first occurrence order, drop duplicates.
    return list(dict.fromkeys(names))


@dataclass
class DemoPlan:
    """One demo to load: its length, whether ``next_obs`` gives an exact s' for its last step, small arrays."""

    name: str
    length: int
    has_next: bool
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32
    dones: np.ndarray  # (T,) float32 in {0, 1}
    proprio: np.ndarray  # (T + has_next, P) float32 (the extra row is next_obs at the last step)

    @property
    def num_frames(self) -> int:
        return self.length + int(self.has_next)


@dataclass
class FilePlan:
    """What to load from one file: the union of demos its sources need, in file order."""

    path: str
    demos: list[DemoPlan] = field(default_factory=list)
    source_demos: list[list[int]] = field(default_factory=list)  # per source of this file: indices into demos
    env_args: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    image_hw: Optional[tuple[int, int]] = None
    action_dim: Optional[int] = None
    proprio_dims: tuple[int, ...] = ()


def _vector(path: str, demo: str, key: str, arr: np.ndarray, T: int) -> np.ndarray:
    """``(T,)`` or ``(T, 1)`` -> float32 ``(T,)``."""
    if arr.ndim == 0 or arr.shape[0] != T or arr.size != T:
        raise UserError(f"{path}: data/{demo}/{key} has shape {tuple(arr.shape)} but actions have {T} steps; "
                        f"expected ({T},)")
    return arr.reshape(T).astype(np.float32)


def _check_finite(path: str, demo: str, key: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise UserError(f"{path}: data/{demo}/{key} holds NaN/inf (first at step {int(bad[0])}); "
                        f"expected finite values")


def _dataset(path: str, group: h5py.Group, where: str, key: str, have_label: str = "keys") -> h5py.Dataset:
    if key not in group:
        have = ", ".join(sorted(group.keys())) or "none"
        raise UserError(f"{path}: key '{key}' missing in {where} (have {have_label}: {have}); "
                        f"expected {where}/{key}")
    ds = group[key]
    if not isinstance(ds, h5py.Dataset):
        raise UserError(f"{path}: {where}/{key} is a group; expected a dataset")
    return ds


def _image_hw(path: str, where: str, key: str, ds: h5py.Dataset, T: int) -> tuple[int, int]:
    if ds.dtype != np.uint8:
        raise UserError(f"{path}: {where}/{key} has dtype {ds.dtype}; expected uint8 images (T, H, W, 3)")
    if ds.ndim != 4 or ds.shape[-1] != 3:
        raise UserError(f"{path}: {where}/{key} has shape {tuple(ds.shape)}; expected uint8 images (T, H, W, 3)")
    if ds.shape[0] != T:
        raise UserError(f"{path}: {where}/{key} has {ds.shape[0]} frames but actions have {T} steps; "
                        f"expected {T} frames (inconsistent lengths)")
    return int(ds.shape[1]), int(ds.shape[2])


def scan_file(path: str, filter_keys: Sequence[Optional[str]], image_keys: Sequence[str],
              proprio_keys: Sequence[str], action_dim: Optional[int],
              expect_hw: Optional[tuple[int, int]], image_hw: Optional[tuple[int, int]],
              proprio_dims: Optional[tuple[int, ...]]) -> FilePlan:
    """Check ``path`` and plan its load for the given sources (one filter key or None per source).

    ``action_dim`` / ``image_hw`` / ``proprio_dims``: what earlier files established (None: not yet known);
    this file must agree. Returns the plan with the small arrays read.
    """
    plan = FilePlan(path=path)
    with open_h5(path) as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            have = ", ".join(sorted(f.keys())) or "nothing"
            raise UserError(f"{path}: no 'data' group (file holds: {have}); expected robomimic's layout "
                            f"with data/demo_<i> groups")
        all_demos = sorted((k for k in data.keys() if isinstance(data[k], h5py.Group)), key=natural_key)
        if not all_demos:
            raise UserError(f"{path}: 'data' holds no demos; expected data/demo_<i> groups")
        from visual_dr3.data.hdf5_writer import verify_string_attrs

        verify_string_attrs(path, f)
        plan.env_args = parse_json_attr(path, data, "env_args")
        plan.meta = parse_json_attr(path, data, "visual_dr3")

        demo_set = set(all_demos)
        wanted: list[list[str]] = []
        for fk in filter_keys:  # None: every demo; a mask name; or an explicit tuple of demo names
            if isinstance(fk, tuple):
                unknown = [n for n in fk if n not in demo_set]
                if unknown or not fk:
                    raise UserError(f"{path}: demo selection {', '.join(unknown[:5]) or '(empty)'}: expected names "
                                    f"of data/<demo> groups")
                wanted.append(list(fk))
            else:
                wanted.append(list(all_demos) if fk is None else read_mask(path, f, fk, demo_set))
        needed = set(n for names in wanted for n in names)
        order = [n for n in all_demos if n in needed]
        index = {n: i for i, n in enumerate(order)}
        plan.source_demos = [[index[n] for n in names] for names in wanted]

        for name in order:
            plan.demos.append(_scan_demo(path, data[name], name, image_keys, proprio_keys, plan,
                                         action_dim, expect_hw, image_hw, proprio_dims))
            action_dim = plan.action_dim
            image_hw = plan.image_hw
            proprio_dims = plan.proprio_dims
    return plan


def _scan_demo(path: str, g: h5py.Group, name: str, image_keys: Sequence[str], proprio_keys: Sequence[str],
               plan: FilePlan, action_dim: Optional[int], expect_hw: Optional[tuple[int, int]],
               image_hw: Optional[tuple[int, int]], proprio_dims: Optional[tuple[int, ...]]) -> DemoPlan:
    where = f"data/{name}"
    for key in REQUIRED_DEMO_KEYS:
        _dataset(path, g, where, key)
    if "obs" not in g or not isinstance(g["obs"], h5py.Group):
        have = ", ".join(sorted(g.keys())) or "none"
        raise UserError(f"{path}: key 'obs' missing in {where} (have keys: {have}); expected an {where}/obs group")

    actions = np.asarray(g["actions"][()])
    if actions.ndim != 2:
        raise UserError(f"{path}: {where}/actions has shape {tuple(actions.shape)}; expected (T, action_dim)")
    T, A = int(actions.shape[0]), int(actions.shape[1])
    if T == 0:
        raise UserError(f"{path}: {where}/actions has 0 steps; expected a demo with at least one step")
    if action_dim is not None and A != action_dim:
        raise UserError(f"{path}: {where}/actions has action dimension {A}; expected {action_dim}")
    if not np.issubdtype(actions.dtype, np.number) or np.issubdtype(actions.dtype, np.complexfloating):
        raise UserError(f"{path}: {where}/actions has dtype {actions.dtype}; expected real numbers")
    actions = actions.astype(np.float32)
    _check_finite(path, name, "actions", actions)
    rewards = _vector(path, name, "rewards", np.asarray(g["rewards"][()]), T)
    _check_finite(path, name, "rewards", rewards)
    dones = _vector(path, name, "dones", np.asarray(g["dones"][()]), T)
    if not np.isin(dones, (0.0, 1.0)).all():
        bad = np.argwhere(~np.isin(dones, (0.0, 1.0)))[0]
        raise UserError(f"{path}: {where}/dones holds {dones[bad[0]]} at step {int(bad[0])}; expected 0 or 1")

    obs = g["obs"]
    owhere = f"{where}/obs"
    # next_obs is used (for the exact s' of the last step) only when it holds every requested key.
    nxt = g.get("next_obs")
    has_next = isinstance(nxt, h5py.Group) and all(k in nxt for k in list(image_keys) + list(proprio_keys))
    nwhere = f"{where}/next_obs"

    for key in image_keys:
        hw = _image_hw(path, owhere, key, _dataset(path, obs, owhere, key, "obs keys"), T)
        if has_next:
            nhw = _image_hw(path, nwhere, key, _dataset(path, nxt, nwhere, key, "next_obs keys"), T)
            if nhw != hw:
                raise UserError(f"{path}: {nwhere}/{key} is {nhw[0]}x{nhw[1]} but obs is {hw[0]}x{hw[1]}; "
                                f"expected the same size")
        if expect_hw is not None and hw != tuple(expect_hw):
            raise UserError(f"{path}: {owhere}/{key} images are {hw[0]}x{hw[1]}; expected "
                            f"{expect_hw[0]}x{expect_hw[1]} (expect_image_size)")
        if image_hw is not None and hw != image_hw:
            raise UserError(f"{path}: {owhere}/{key} images are {hw[0]}x{hw[1]} but other cameras/files are "
                            f"{image_hw[0]}x{image_hw[1]}; expected every camera the same size")
        image_hw = hw

    rows, dims = [], []
    for key in proprio_keys:
        ds = _dataset(path, obs, owhere, key, "obs keys")
        arr = np.asarray(ds[()])
        if arr.ndim == 0 or arr.shape[0] != T:
            raise UserError(f"{path}: {owhere}/{key} has shape {tuple(arr.shape)} but actions have {T} steps; "
                            f"expected {T} rows (inconsistent lengths)")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise UserError(f"{path}: {owhere}/{key} has dtype {arr.dtype}; expected real numbers (proprio)")
        arr = arr.reshape(T, -1).astype(np.float32)
        if has_next:
            n_ds = _dataset(path, nxt, nwhere, key, "next_obs keys")
            if n_ds.shape[0] != T or int(np.prod(n_ds.shape[1:], dtype=np.int64)) != arr.shape[1]:
                raise UserError(f"{path}: {nwhere}/{key} has shape {tuple(n_ds.shape)}; expected "
                                f"{(T, *ds.shape[1:])} like obs/{key}")
            last = np.asarray(n_ds[T - 1:T]).reshape(1, -1).astype(np.float32)
            arr = np.concatenate([arr, last])
        _check_finite(path, name, f"obs/{key}", arr)
        rows.append(arr)
        dims.append(arr.shape[1])
    dims_t = tuple(dims)
    if proprio_dims is not None and dims_t != tuple(proprio_dims):
        raise UserError(f"{path}: {owhere} proprio keys {list(proprio_keys)} have sizes {list(dims_t)} but "
                        f"earlier demos/files have {list(proprio_dims)}; expected the same sizes everywhere")
    proprio = (np.concatenate(rows, axis=1) if rows
               else np.zeros((T + int(has_next), 0), dtype=np.float32))

    plan.action_dim, plan.image_hw, plan.proprio_dims = A, image_hw, dims_t
    return DemoPlan(name=name, length=T, has_next=has_next, actions=actions, rewards=rewards, dones=dones,
                    proprio=np.ascontiguousarray(proprio))
