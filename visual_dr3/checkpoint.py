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


from visual_dr3.safe_load import (CONVERT_COMMAND, _first_line, allowed_globals,  # noqa: F401  (re-exported)
                                  load_weights_only)


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
