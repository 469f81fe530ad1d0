"""Checkpoints written by ``train.py``: read and validate one, check it against a config, rebuild its env
args and its policy. Used by ``train.py --resume``, ``eval.py``, the evaluation during training and the
experiment tools, so every reader gives the same one-line errors.

A checkpoint is a Lightning checkpoint (``state_dict``, ``hyper_parameters``, loop and optimizer state) plus
our metadata under ``visual_dr3`` (:data:`REQUIRED_META`: the run's config, what the policy reads, the
dataset's robomimic env_args) and, for exact resume, every rank's RNG states (``visual_dr3_resume``, see
:mod:`visual_dr3.learner.resume`). Top-level imports are light (no torch, no robosuite).

Every checkpoint is read by :func:`load_weights_only`: the zip records' CRCs are checked, then it is unpickled
with ``weights_only=True`` and an explicit allow-list (:func:`allowed_globals`), so a file that holds anything
but plain data is refused in one line before any of it runs (the refusal names the converter for trusted files,
:mod:`visual_dr3.app.convert_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from visual_dr3.errors import UserError

META_KEY = "visual_dr3"
REQUIRED_META = ("config", "image_keys", "proprio_keys", "image_size", "action_dim", "env_args")
#: render settings that change pixels (MUJOCO_GL egl vs osmesa and hard_reset do not)
PIXEL_RENDER_KEYS = ("reflection", "offsamples", "image_convention")
#: config keys that decide the networks' shapes and what is trained: a resume must match them
RESUME_KEYS = ("algorithm", "model", "cql.lagrange", "algo.auto_alpha", "data.fixed_action_dims", "kl.on",
               "algo.target_encoder")


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


def read_checkpoint(path: "str | os.PathLike", flag: str = "--checkpoint", mmap: bool = False) -> dict:
    """Load a checkpoint safely (:func:`load_weights_only`) and check it is ours; one-line :class:`UserError`
    naming ``flag`` if missing, unreadable, unsafe or not ours. ``mmap``: map the tensors instead of reading them
    (to look at metadata only)."""
    p = Path(path)
    ckpt = load_weights_only(p, flag, mmap=mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{flag} {p}: not a Lightning checkpoint (no state_dict); expected a checkpoint "
                        f"written by train.py")
    meta = ckpt.get(META_KEY)
    if not isinstance(meta, dict):
        raise UserError(f"{flag} {p}: no '{META_KEY}' metadata (incompatible checkpoint); expected one "
                        f"written by train.py")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"{flag} {p}: '{META_KEY}' metadata lacks {', '.join(missing)} (incompatible "
                        f"checkpoint); expected one written by train.py")
    if "hyper_parameters" not in ckpt:
        raise UserError(f"{flag} {p}: no hyper_parameters (incompatible checkpoint); expected one written "
                        f"by train.py")
    return ckpt


def check_resume_compatible(path: "str | os.PathLike", cfg, image_size: int) -> int:
    """A checkpoint whose networks differ from ``cfg``'s (:data:`RESUME_KEYS`, the image size) is a one-line
    error naming the differing keys. Returns the checkpoint's global step."""
    from visual_dr3.learner.config import TrainConfig, to_dict

    ckpt = read_checkpoint(path, flag="--resume", mmap=True)
    meta = ckpt[META_KEY]
    old = _with_kl_on(meta.get("config", {}))
    now = _with_kl_on(to_dict(cfg))
    # what a checkpoint written before a key existed had: the model fields' defaults, CQL, every action dim learned
    legacy = {"algorithm": "cql", "data.fixed_action_dims": "none", "kl.on": False, "algo.target_encoder": False}
    diffs = []
    for key in RESUME_KEYS:
        a, b = old, now
        for part in key.split("."):
            a, b = (a or {}).get(part, legacy.get(key)), (b or {}).get(part)
        if key == "model" and isinstance(a, dict):
            a = {**to_dict(TrainConfig())["model"], **a}
        if a != b:
            diffs.append(f"{key}: checkpoint {a!r}, now {b!r}")
    if meta.get("image_size") not in (None, image_size):
        diffs.append(f"image_size: checkpoint {meta['image_size']}, dataset {image_size}")
    if diffs:
        raise UserError(f"--resume {path}: made with another configuration ({'; '.join(diffs)}); expected a "
                        f"checkpoint of the same networks")
    return int(ckpt.get("global_step", 0))


def _with_kl_on(config: dict) -> dict:
    """``config`` with ``kl.on``: whether the run holds the KL's lagged policy (``kl.coef > 0``); its weight may
    change on a resume, its presence may not."""
    config = dict(config or {})
    if "kl" in config:
        config["kl"] = {**config["kl"], "on": float(config["kl"].get("coef", 0.0)) > 0}
    return config


def _camera_of(image_key: str) -> str:
    return image_key[: -len("_image")] if image_key.endswith("_image") else image_key


def _as_int(v) -> Optional[int]:
    if isinstance(v, (list, tuple)):
        vals = {int(x) for x in v}
        return vals.pop() if len(vals) == 1 else None
    return int(v) if v is not None else None


def resolve_env_args(meta: dict, where: str = "checkpoint") -> tuple[dict, list[str]]:
    """The env_args to evaluate with, checked against what the policy was trained on.

    ``meta``: ``image_keys``, ``image_size``, ``env_args``, optional ``dataset_meta`` and ``config`` (the
    checkpoint's ``visual_dr3`` dict, or a module's hyperparameters). Returns ``(env_args, notes)``; raises
    a one-line :class:`UserError` on any mismatch. A checkpoint without env_args (a dataset that had none)
    falls back to the task's standard env at the trained image size (said in ``notes``).
    """
    from visual_dr3.envs.make import env_args_for, render_settings
    from visual_dr3.envs.tasks import get_task

    notes: list[str] = []
    image_keys = list(meta["image_keys"])
    image_size = int(meta["image_size"])
    cameras = [_camera_of(k) for k in image_keys]
    env_args = meta.get("env_args") or {}
    task_name = (meta.get("config") or {}).get("task")
    if not env_args:
        if task_name is None:
            raise UserError(f"{where}: no env_args and no task in its config; cannot rebuild the environment")
        env_args = env_args_for(task_name, image_size, cameras)
        notes.append(f"{where} has no env_args: using task '{task_name}''s standard env at {image_size}px")
    if not isinstance(env_args, dict) or "env_name" not in env_args:
        raise UserError(f"{where}: env_args is not robomimic's (env_name/env_kwargs); got {str(env_args)[:80]!r}")
    kw = env_args.get("env_kwargs") or {}
    if task_name is not None:
        spec = get_task(task_name)
        if spec.env_name != env_args["env_name"]:
            raise UserError(f"{where}: task '{task_name}' is robosuite '{spec.env_name}' but env_args describe "
                            f"'{env_args['env_name']}'")
    if kw.get("use_camera_obs") is False:
        raise UserError(f"{where}: env_args have use_camera_obs=False; the policy reads camera images")
    env_cams = kw.get("camera_names")
    env_cams = [env_cams] if isinstance(env_cams, str) else list(env_cams or [])
    absent = [c for c in cameras if c not in env_cams]
    if absent:
        raise UserError(f"{where}: the policy reads camera(s) {', '.join(absent)} that env_args do not render "
                        f"(camera_names: {', '.join(env_cams) or 'none'})")
    h, w = _as_int(kw.get("camera_heights")), _as_int(kw.get("camera_widths"))
    if (h, w) != (image_size, image_size):
        raise UserError(f"{where}: the policy was trained on {image_size}x{image_size} images but env_args "
                        f"render {kw.get('camera_heights')}x{kw.get('camera_widths')}")
    dmeta = meta.get("dataset_meta") or {}
    if dmeta.get("image_size") not in (None, image_size):
        raise UserError(f"{where}: dataset metadata says image_size {dmeta['image_size']} but the policy "
                        f"was built for {image_size}")
    if dmeta.get("cameras") is not None:
        not_in_data = [c for c in cameras if c not in list(dmeta["cameras"])]
        if not_in_data:
            raise UserError(f"{where}: the policy reads camera(s) {', '.join(not_in_data)} that its dataset did "
                            f"not record (dataset cameras: {', '.join(dmeta['cameras'])})")
    render = dmeta.get("render")
    if isinstance(render, dict):
        ours = render_settings()
        diff = [f"{k}={render[k]!r} (evaluation renders {ours[k]!r})" for k in PIXEL_RENDER_KEYS
                if k in render and k in ours and render[k] != ours[k]]
        if diff:
            raise UserError(f"{where}: the training data was rendered with {', '.join(diff)}; images would "
                            f"differ from what the policy was trained on")
    else:  # not made by this project (e.g. robomimic's dataset_states_to_obs): robosuite's default rendering
        from visual_dr3.envs.make import FAST_RENDER_KEY

        env_args = {**env_args, FAST_RENDER_KEY: False}
        notes.append(f"{where}: its dataset carries no visual-dr3 render settings (e.g. made by robomimic's "
                     f"tools): evaluating with robosuite's default rendering (reflections, multisampling)")
    return env_args, notes


def strip_compile_prefix(state_dict: dict) -> dict:
    """Keys of a ``torch.compile``-wrapped submodule carry ``._orig_mod``; a fresh module has none."""
    return {k.replace("._orig_mod", ""): v for k, v in state_dict.items()}


def load_policy(path: "str | os.PathLike", device: str = "auto", ckpt: Optional[dict] = None):
    """``(module, meta, ckpt)``: the ``DR3CQL`` of a checkpoint on ``device`` (auto/cpu/cuda), in eval mode."""
    dev = resolve_device(device)
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    from visual_dr3.learner.module import DR3CQL

    try:
        module = DR3CQL(**ckpt["hyper_parameters"])
        module.load_state_dict(strip_compile_prefix(ckpt["state_dict"]))
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--checkpoint {path}: networks do not load ({type(e).__name__}: {first}); "
                        f"incompatible checkpoint") from None
    module.to(dev).eval()
    return module, ckpt[META_KEY], ckpt


def resolve_device(device: str):
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")
        return torch.device(device)
    raise UserError(f"--device {device!r}: expected auto, cpu or cuda")
