"""Evaluate a checkpoint in simulation: what ``python eval.py`` runs (:func:`evaluate_checkpoint`).

Everything comes from the checkpoint alone (:mod:`visual_dr3.checkpoint`): the networks (``DR3CQL`` with its
saved hyperparameters), the task (``config.task``), the env (``checkpoint["visual_dr3"]["env_args"]``, the
dataset's robomimic env_args) and what the policy reads (image keys, image size, proprio keys). The env is
rebuilt with the same render settings as the dataset (``visual_dr3.envs.make``); any mismatch between what
the policy was trained on and what the env renders (image size, cameras, image convention, reflections,
multisampling) is a one-line error before anything runs.

Top-level imports are light (no torch, no robosuite): rollout workers are spawned processes that re-import
the main module (``eval.py`` -> :mod:`visual_dr3.app.eval` -> this file).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path
from typing import Optional, Sequence

from visual_dr3.checkpoint import META_KEY, load_policy, read_checkpoint, resolve_device, resolve_env_args
from visual_dr3.errors import UserError, say
from visual_dr3.evaluation.pool import ENVS_PER_WORKER, POLICY_IN, envs_for, policy_in_workers
from visual_dr3.fileio import ensure_writable_dir, write_json_atomic

#: which weights act: ``auto`` (the moving average when the checkpoint has one), ``trained``, ``ema``
WEIGHTS = ("auto", "trained", "ema")


def evaluate_checkpoint(checkpoint: "str | os.PathLike", episodes: Optional[int] = None, workers: int = 1,
                        seed: Optional[int] = None, deterministic: bool = True, device: str = "auto",
                        video_dir=None, video_episodes: int = 5, horizon: Optional[int] = None, json_out=None,
                        progress: bool = True, faults: Sequence = (), warn=None, weights: str = "auto",
                        envs_per_worker: int = ENVS_PER_WORKER, policy_in: str = POLICY_IN) -> dict:
    """Evaluate a checkpoint: returns the report (``summary`` + per-episode ``records``), also written to
    ``json_out`` when given. See :mod:`visual_dr3.app.eval` for the arguments.

    By default it acts as training's evaluation does (:func:`training_eval_settings`): the mean action
    (``deterministic``), and the training run's ``seed``, ``eval_episodes`` and ``eval_horizon`` for the
    arguments left None; so the episodes are those of the run's logged ``eval/success_rate``."""
    import torch

    from visual_dr3.evaluation.policy import TorchPolicy
    from visual_dr3.evaluation.pool import RolloutPool
    from visual_dr3.evaluation.stats import env_seed_for, summarize

    if episodes is not None:
        _check_positive("--episodes", episodes)
    _check_positive("--workers", workers)
    _check_positive("--envs-per-worker", envs_per_worker)
    if horizon is not None:
        _check_positive("--horizon", horizon)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UserError(f"--seed: got {seed!r}; expected an integer >= 0")
    if video_episodes < 0:
        raise UserError(f"--video-episodes: got {video_episodes!r}; expected an integer >= 0")
    if weights not in WEIGHTS:
        raise UserError(f"--weights: got {weights!r}; expected one of {', '.join(WEIGHTS)}")
    dev = resolve_device(device)  # before loading anything: a bad --device or --policy-in fails fast
    policy_in_workers(policy_in, dev, int(workers))
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt[META_KEY]
    trained = training_eval_settings(meta.get("config") or {})
    seed = trained["seed"] if seed is None else int(seed)
    episodes = trained["episodes"] if episodes is None else int(episodes)
    horizon = trained["horizon"] if horizon is None else int(horizon)
    local = policy_in_workers(policy_in, dev, min(int(workers), episodes))
    env_args, notes = resolve_env_args(meta, where=f"--checkpoint {checkpoint}")
    if weights == "ema" and not any(k.startswith("ema_actor.") for k in ckpt.get("state_dict", {})):
        raise UserError(f"--weights ema: {checkpoint} holds no moving average (trained with algo.policy_ema 0)")
    if json_out is not None:
        ensure_writable_dir(Path(json_out).parent, "--json")
    if video_dir is not None:
        ensure_writable_dir(Path(video_dir), "--video")
    workers = min(int(workers), int(episodes))
    envs_per_worker = 1 if local else envs_for(episodes, workers, envs_per_worker)
    pool_kw = dict(env_seed=env_seed_for(int(seed)), expect_image_size=int(meta["image_size"]),
                   expect_proprio_dim=int(ckpt["hyper_parameters"].get("proprio_dim", 0)) or None,
                   faults=tuple(faults))
    if warn is not None:
        pool_kw["warn"] = warn
    # Start the workers first: they build their envs (seconds) while the parent builds the networks.
    with RolloutPool(env_args, meta["image_keys"], meta["proprio_keys"], workers=workers, horizon=horizon,
                     envs_per_worker=envs_per_worker, policy_in_workers=local, **pool_kw) as pool:
        module, _, _ = load_policy(checkpoint, dev, ckpt=ckpt)
        choose_weights(module, weights)
        if dev.type == "cpu" and not local:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        policy = TorchPolicy(module, meta["image_keys"], deterministic=deterministic, device=dev)
        for line in notes:
            (warn or say)(f"note: {line}")
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
        "envs_per_worker": envs_per_worker,
        "policy_in": "workers" if local else "parent",
        "seed": int(seed),
        "env_seed": env_seed_for(int(seed)),
        "deterministic": bool(deterministic),
        "action": "mean" if deterministic else "sampled",  # tanh of the mean (training's evaluation) or a sample
        "as_training_eval": bool(deterministic) and (seed, int(episodes), horizon) == (
            trained["seed"], trained["episodes"], trained["horizon"]),
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
        "timing": dataclasses.asdict(run.timing),
        "warnings": run.warnings + [f"note: {n}" for n in notes],
    }
    if json_out is not None:
        write_json_atomic(json_out, report)
    return report


def choose_weights(module, weights: str) -> str:
    """Make ``module`` act with the weights ``--weights`` names: ``trained``, or (``auto``, ``ema``) the moving
    average when it has one. Returns which acts: ``"ema"`` or ``"trained"``."""
    module.act_with_ema = weights != "trained" and module.ema_actor is not None
    return "ema" if module.act_with_ema else "trained"


def training_eval_settings(config: dict) -> dict:
    """What training's evaluation used, from a checkpoint's saved config: ``seed`` (the run's), ``episodes``
    (``eval_episodes``, 20 when absent) and ``horizon`` (``eval_horizon``; None: the env's)."""
    return {"seed": int(config.get("seed", 0) or 0), "episodes": int(config.get("eval_episodes") or 20),
            "horizon": None if config.get("eval_horizon") is None else int(config["eval_horizon"])}


def _check_positive(flag: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"{flag}: got {v!r}; expected a positive integer")
