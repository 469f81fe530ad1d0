"""``python eval.py --checkpoint PATH --episodes N``: roll a trained policy out in simulation.

Everything comes from the checkpoint alone: the networks (``DR3CQL`` with its saved hyperparameters), the
task (``config.task``), the env (``checkpoint["visual_dr3"]["env_args"]``, the dataset's robomimic env_args)
and what the policy reads (image keys, image size, proprio keys). The env is rebuilt with the same render
settings as the dataset (``visual_dr3.envs.make``); any mismatch between what the policy was trained on and
what the env renders (image size, cameras, image convention, reflections, multisampling) is a one-line
error before anything runs.

Top-level imports are light (no torch, no robosuite): rollout workers are spawned processes that re-import
the main module (``eval.py`` -> this file).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from visual_dr3.errors import OneLineParser, UserError, cli_entry
from visual_dr3.fileio import ensure_writable_dir, write_text_atomic

META_KEY = "visual_dr3"
REQUIRED_META = ("config", "image_keys", "proprio_keys", "image_size", "action_dim", "env_args")
#: which weights act: ``auto`` (the moving average when the checkpoint has one), ``trained``, ``ema``
WEIGHTS = ("auto", "trained", "ema")
#: render settings that change pixels (MUJOCO_GL egl vs osmesa and hard_reset do not)
PIXEL_RENDER_KEYS = ("reflection", "offsamples", "image_convention")


# ----------------------------------------------------------------------------------------------------------
# checkpoint -> policy + env
# ----------------------------------------------------------------------------------------------------------

def read_checkpoint(path: "str | os.PathLike", flag: str = "--checkpoint") -> dict:
    """``torch.load`` a checkpoint on the CPU; one-line :class:`UserError` if missing, unreadable or not ours."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {p}: file not found")
    if not p.is_file():
        raise UserError(f"{flag} {p}: not a file")
    import pickle
    import zipfile

    import torch

    try:
        ckpt = torch.load(str(p), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError,
            AttributeError, ModuleNotFoundError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{flag} {p}: not a PyTorch checkpoint ({type(e).__name__}: {first})") from None
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
    else:
        notes.append(f"{where} carries no render settings of its dataset: assuming visual-dr3's "
                     f"({', '.join(f'{k}={v}' for k, v in render_settings().items() if k in PIXEL_RENDER_KEYS)})")
    return env_args, notes


def _strip_compile_prefix(state_dict: dict) -> dict:
    """Keys of a ``torch.compile``-wrapped submodule carry ``._orig_mod``; a fresh module has none."""
    return {k.replace("._orig_mod", ""): v for k, v in state_dict.items()}


def load_policy(path: "str | os.PathLike", device: str = "auto", ckpt: Optional[dict] = None):
    """``(module, meta, ckpt)``: the ``DR3CQL`` of a checkpoint on ``device`` (auto/cpu/cuda), in eval mode."""
    import torch

    dev = resolve_device(device)
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    from visual_dr3.learner.module import DR3CQL

    try:
        module = DR3CQL(**ckpt["hyper_parameters"])
        module.load_state_dict(_strip_compile_prefix(ckpt["state_dict"]))
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


# ----------------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------------

def write_json_atomic(path: "str | os.PathLike", obj: Any) -> Path:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    return write_text_atomic(path, json.dumps(_json_safe(obj), indent=1) + "\n")


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _json_safe(obj.item())
    return obj


def evaluate_checkpoint(checkpoint: "str | os.PathLike", episodes: int, workers: int = 1, seed: int = 0,
                        deterministic: bool = False, device: str = "auto", video_dir=None,
                        video_episodes: int = 5, horizon: Optional[int] = None, json_out=None,
                        progress: bool = True, faults: Sequence = (), warn=None, weights: str = "auto") -> dict:
    """Evaluate a checkpoint: returns the report (``summary`` + per-episode ``records``), also written to
    ``json_out`` when given. See :func:`main` for the arguments."""
    import torch

    from visual_dr3.evaluation.policy import TorchPolicy
    from visual_dr3.evaluation.pool import RolloutPool
    from visual_dr3.evaluation.stats import env_seed_for, summarize

    _check_positive("--episodes", episodes)
    _check_positive("--workers", workers)
    if horizon is not None:
        _check_positive("--horizon", horizon)
    if seed is None or int(seed) < 0:
        raise UserError(f"--seed: got {seed!r}; expected an integer >= 0")
    if video_episodes < 0:
        raise UserError(f"--video-episodes: got {video_episodes!r}; expected an integer >= 0")
    if weights not in WEIGHTS:
        raise UserError(f"--weights: got {weights!r}; expected one of {', '.join(WEIGHTS)}")
    dev = resolve_device(device)  # before loading anything: a bad --device fails fast
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt[META_KEY]
    env_args, notes = resolve_env_args(meta, where=f"--checkpoint {checkpoint}")
    if weights == "ema" and not any(k.startswith("ema_actor.") for k in ckpt.get("state_dict", {})):
        raise UserError(f"--weights ema: {checkpoint} holds no moving average (trained with algo.policy_ema 0)")
    if json_out is not None:
        ensure_writable_dir(Path(json_out).parent, "--json")
    if video_dir is not None:
        ensure_writable_dir(Path(video_dir), "--video")
    workers = min(int(workers), int(episodes))
    pool_kw = dict(env_seed=env_seed_for(int(seed)), expect_image_size=int(meta["image_size"]),
                   expect_proprio_dim=int(ckpt["hyper_parameters"].get("proprio_dim", 0)) or None,
                   faults=tuple(faults))
    if warn is not None:
        pool_kw["warn"] = warn
    # Start the workers first: they build their envs (seconds) while the parent builds the networks.
    with RolloutPool(env_args, meta["image_keys"], meta["proprio_keys"], workers=workers, horizon=horizon,
                     **pool_kw) as pool:
        module, _, _ = load_policy(checkpoint, dev, ckpt=ckpt)
        module.act_with_ema = weights != "trained" and module.ema_actor is not None
        if dev.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        policy = TorchPolicy(module, meta["image_keys"], deterministic=deterministic, device=dev)
        for line in notes:
            (warn or _note)(f"note: {line}")
        run = pool.run(policy, int(episodes), seed=int(seed),
                       video_episodes=range(min(int(video_episodes), int(episodes))), video_dir=video_dir,
                       progress=progress, desc="eval")
        horizon_used = pool.horizon
    records = run.records
    cfg = meta.get("config") or {}
    report = {
        "checkpoint": str(checkpoint),
        "task": cfg.get("task"),
        "env_name": env_args.get("env_name"),
        "global_step": ckpt.get("global_step"),
        "episodes": int(episodes),
        "workers": workers,
        "seed": int(seed),
        "env_seed": env_seed_for(int(seed)),
        "deterministic": bool(deterministic),
        "weights": "ema" if module.act_with_ema else "trained",
        "device": str(dev),
        "horizon": horizon_used,
        "image_size": int(meta["image_size"]),
        "image_keys": list(meta["image_keys"]),
        "proprio_keys": list(meta["proprio_keys"]),
        "render": (meta.get("dataset_meta") or {}).get("render"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": summarize(records, run.seconds, run.rollout_seconds),
        "records": records,
        "warnings": run.warnings + [f"note: {n}" for n in notes],
    }
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_positive(flag: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"{flag}: got {v!r}; expected a positive integer")


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------

def _int_arg(flag: str, minimum: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise UserError(f"{flag}: got {s!r}; expected an integer >= {minimum}") from None
        if v < minimum:
            raise UserError(f"{flag}: got {v}; expected an integer >= {minimum}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="eval.py", description="Roll a trained visual-dr3 policy out in simulation (robosuite), "
                "with parallel env workers and batched inference; prints success rate with a 95% Wilson "
                "interval and writes per-episode records.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train.py (e.g. runs/lift/checkpoints/last.ckpt)")
    p.add_argument("--episodes", type=_int_arg("--episodes", 1), default=20, help="episodes to run (default 20)")
    p.add_argument("--workers", type=_int_arg("--workers", 1), default=1,
                   help="env worker processes, one env each (default 1; about one per free CPU core)")
    p.add_argument("--seed", type=_int_arg("--seed", 0), default=0,
                   help="run seed: episode i starts from a seed derived from (seed, i) (default 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="act with the policy's mode tanh(mean) instead of sampling")
    p.add_argument("--weights", default="auto", choices=list(WEIGHTS),
                   help="act with the trained weights or their moving average (algo.policy_ema); "
                        "default auto: the average when the checkpoint has one")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the policy runs (default auto: cuda when available)")
    p.add_argument("--video", metavar="DIR", default=None,
                   help="write mp4s of the first --video-episodes episodes here (cameras side by side)")
    p.add_argument("--video-episodes", type=_int_arg("--video-episodes", 0), default=5,
                   help="how many episodes (the first K) get a video with --video (default 5)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the report (summary + per-episode records) here")
    p.add_argument("--horizon", type=_int_arg("--horizon", 1), default=None,
                   help="episode limit in env steps (default: the checkpoint env's horizon, the task's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from visual_dr3.evaluation.lockstep import RolloutError
    from visual_dr3.evaluation.stats import format_summary

    try:
        report = evaluate_checkpoint(
            args.checkpoint, args.episodes, workers=args.workers, seed=args.seed,
            deterministic=args.deterministic, device=args.device, video_dir=args.video,
            video_episodes=args.video_episodes, horizon=args.horizon, json_out=args.json,
            progress=not args.no_progress, weights=args.weights)
    except RolloutError as e:
        print(f"error: evaluation failed: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    extra = [("seeds", f"run seed {report['seed']}; episode i starts from episode_seed(seed, i)"),
             ("policy", ("deterministic (tanh of the mean)" if report["deterministic"] else "stochastic (sampled)")
              + (", moving-average weights" if report["weights"] == "ema" else ""))]
    if args.json:
        extra.append(("json", str(args.json)))
    videos = [r["video"] for r in report["records"] if r.get("video")]
    if videos:
        extra.append(("videos", f"{len(videos)} in {args.video}"))
    print(format_summary(report["summary"], extra=extra,
                         title=f"evaluation: {report['task']} (step {report['global_step']}, "
                               f"{Path(args.checkpoint).name}, {report['workers']} worker(s), {report['device']})"),
          flush=True)
    return report
