"""Evaluation during training: a Lightning callback that rolls the current policy out every N steps.

Wiring (``visual_dr3/app/train.py``, in ``build_trainer``)::

    from visual_dr3.evaluation.callback import make_eval_callback

    cb = make_eval_callback(cfg, out)      # None when cfg.eval_every == 0
    if cb is not None:
        callbacks.insert(0, cb)            # before ModelCheckpoint (Lightning runs checkpoint callbacks last anyway)

What the callback does at every ``every_n_steps``-th optimizer step (and once more at the end of training
unless the last step was just evaluated):

- The policy is the LightningModule itself (``DR3CQL.act``; put in eval mode for the rollouts, then back).
  The env is rebuilt from the module's hyperparameters (``env_args``, image size, cameras, proprio keys),
  checked once at ``on_fit_start`` (a mismatch is a one-line UserError before training starts).
- Under DDP the episodes are split across ranks: rank r runs episodes r, r+W, r+2W, ... (``rank_episodes``)
  with its own worker processes; episode i always starts from ``episode_seed(seed, i)``, so the evaluated
  initial states are the same at every evaluation and for any number of ranks/workers. Per-episode records
  are gathered on every rank (``torch.distributed.all_gather_object``), so all ranks compute the same
  summary and put the same ``eval/*`` values in ``trainer.callback_metrics``.
- Metrics go to every logger (CSV, wandb, TensorBoard) at the training step: ``eval/success_rate``,
  ``eval/success_ci95_low``, ``eval/success_ci95_high`` (95% Wilson interval), ``eval/return``,
  ``eval/length``, ``eval/env_steps_per_s``, ``eval/errors``.
- Rank 0 alone writes files: ``<output_dir>/eval/step_XXXXXXX.json`` (summary + records), videos of its
  first ``video_episodes`` episodes under ``<video_dir>/step_XXXXXXX/`` (also logged to wandb as
  ``eval/video`` when a WandbLogger is attached).
- ``<output_dir>/checkpoints/best.ckpt`` is the checkpoint of the best success rate so far (strictly
  better replaces it; the first evaluation always writes it). ``trainer.save_checkpoint`` runs on every
  rank (Lightning requires it: it ends in a barrier and strategies may shard), writes on rank 0 to a
  temporary name, which rank 0 then renames. The callback's state (best rate/step, last evaluated step) is
  saved in checkpoints, so a resumed run keeps its best.
- The worker pool is started at the first evaluation and kept for the whole run (env creation costs
  1.5-3 s per worker); it is closed when training ends or fails. A pool failure (e.g. every attempt of an
  episode crashed, or no worker can start) does not stop training: that rank's episodes are recorded as
  failed with the error, and a fresh pool is started at the next evaluation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from visual_dr3.checkpoint import resolve_env_args
from visual_dr3.errors import UserError, say
from visual_dr3.evaluation.records import EpisodeResult
from visual_dr3.evaluation.policy import TorchPolicy
from visual_dr3.evaluation.pool import ENVS_PER_WORKER, POLICY_IN, RolloutPool, envs_for, policy_in_workers
from visual_dr3.evaluation.stats import env_seed_for, episode_seed, rank_episodes, summarize
from visual_dr3.evaluation.workers import format_exc
from visual_dr3.fileio import write_json_atomic
from visual_dr3.learner.callbacks import GracefulStop

METRIC_KEYS = {
    "success_rate": "eval/success_rate",
    "success_ci95_low": "eval/success_ci95_low",
    "success_ci95_high": "eval/success_ci95_high",
    "mean_return": "eval/return",
    "mean_length": "eval/length",
    "env_steps_per_s": "eval/env_steps_per_s",
    "errors": "eval/errors",
}


class EvalCallback(Callback):
    """Roll the policy out every ``every_n_steps`` steps: ``episodes`` episodes in total (split over DDP
    ranks), ``workers`` env processes per rank, seeds from ``seed``.

    ``video_dir``: where rank 0 writes mp4s of its first ``video_episodes`` episodes (None: no videos).
    ``output_dir``: the run folder (``eval/`` JSONs, ``checkpoints/best.ckpt``); None means the trainer's
    ``default_root_dir``. ``deterministic``: act with tanh(mean) (default) or sample. ``horizon``: override
    the env's horizon. ``save_best``: keep ``checkpoints/best.ckpt``. ``eval_at_end``: also evaluate when
    training ends (if that step was not just evaluated). ``faults``: :class:`~visual_dr3.evaluation.workers.FaultSpec`
    test hook.
    """

    def __init__(self, every_n_steps: int, episodes: int, workers: int = 1, seed: int = 0,
                 video_dir: "str | os.PathLike | None" = None, video_episodes: int = 2,
                 output_dir: "str | os.PathLike | None" = None, deterministic: bool = True,
                 horizon: Optional[int] = None, save_best: bool = True, eval_at_end: bool = True,
                 progress: bool = False, faults: Sequence = (), envs_per_worker: int = ENVS_PER_WORKER,
                 policy_in: str = POLICY_IN):
        super().__init__()
        for name, v, lo in (("every_n_steps", every_n_steps, 1), ("episodes", episodes, 1), ("workers", workers, 1),
                            ("seed", seed, 0), ("video_episodes", video_episodes, 0),
                            ("envs_per_worker", envs_per_worker, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UserError(f"EvalCallback {name}: got {v!r}; expected an integer >= {lo}")
        self.every_n_steps, self.episodes, self.workers, self.seed = every_n_steps, episodes, workers, seed
        self.envs_per_worker = envs_per_worker
        policy_in_workers(policy_in, "cpu", 1)  # a bad choice fails here, not at the first evaluation
        self.policy_in = policy_in
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.video_episodes = video_episodes
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.deterministic, self.horizon = bool(deterministic), horizon
        self.save_best, self.eval_at_end, self.progress = save_best, eval_at_end, progress
        self.faults = tuple(faults)
        # state (saved in checkpoints)
        self.best_success_rate = -math.inf
        self.best_step: Optional[int] = None
        self.last_eval_step: Optional[int] = None
        # runtime
        self._pool: Optional[RolloutPool] = None
        self._env_args: Optional[dict] = None
        self.last_summary: Optional[dict] = None
        self.last_records: Optional[list[dict]] = None

    # -- checkpointed state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_success_rate": self.best_success_rate, "best_step": self.best_step,
                "last_eval_step": self.last_eval_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_success_rate = state_dict.get("best_success_rate", -math.inf)
        self.best_step = state_dict.get("best_step")
        self.last_eval_step = state_dict.get("last_eval_step")

    # -- paths ----------------------------------------------------------------------------------------
    def run_dir(self, trainer: L.Trainer) -> Path:
        return self.output_dir if self.output_dir is not None else Path(trainer.default_root_dir)

    def best_path(self, trainer: L.Trainer) -> Path:
        return self.run_dir(trainer) / "checkpoints" / "best.ckpt"

    def json_path(self, trainer: L.Trainer, step: int) -> Path:
        return self.run_dir(trainer) / "eval" / f"step_{step:07d}.json"

    # -- hooks ----------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = dict(pl_module.hparams)
        missing = [k for k in ("image_keys", "proprio_keys", "image_size", "env_args") if k not in hp]
        if missing:
            raise UserError(f"EvalCallback: the module's hyperparameters lack {', '.join(missing)}; "
                            f"expected a DR3CQL module")
        self._env_args, notes = resolve_env_args(hp, where="training dataset")
        if trainer.is_global_zero:
            for n in notes:
                say(f"note: {n}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_eval_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            step = trainer.global_step
            stopped = any(isinstance(c, GracefulStop) and c.stopping for c in trainer.callbacks)
            if self.eval_at_end and step > 0 and step != self.last_eval_step and not stopped:
                self.evaluate(trainer, pl_module)
        finally:
            self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- the evaluation -------------------------------------------------------------------------------
    def _get_pool(self, pl_module: L.LightningModule, n_episodes: int) -> RolloutPool:
        if self._pool is None:
            hp = pl_module.hparams
            if self._env_args is None:
                self._env_args, _ = resolve_env_args(dict(hp), where="training dataset")
            workers = max(1, min(self.workers, n_episodes))
            local = policy_in_workers(self.policy_in, pl_module.device, workers)
            self._pool = RolloutPool(self._env_args, hp["image_keys"], hp["proprio_keys"],
                                     workers=workers, horizon=self.horizon, policy_in_workers=local,
                                     env_seed=env_seed_for(self.seed),
                                     expect_image_size=int(hp["image_size"]),
                                     expect_proprio_dim=int(hp.get("proprio_dim") or 0) or None,
                                     faults=self.faults, warn=say,
                                     envs_per_worker=envs_for(n_episodes, min(self.workers, n_episodes),
                                                              self.envs_per_worker))
        return self._pool

    def _run_local(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict:
        rank, world = trainer.global_rank, trainer.world_size
        mine = rank_episodes(self.episodes, rank, world)
        payload: dict[str, Any] = {"rank": rank, "records": [], "seconds": 0.0, "rollout_seconds": 0.0,
                                   "warnings": []}
        if not mine:
            return payload
        video_eps = mine[: self.video_episodes] if (rank == 0 and self.video_dir is not None) else []
        was_training = pl_module.training
        pl_module.eval()
        try:
            pool = self._get_pool(pl_module, len(mine))
            policy = TorchPolicy(pl_module, pl_module.hparams["image_keys"], deterministic=self.deterministic)
            run = pool.run(policy, mine, seed=self.seed, video_episodes=video_eps,
                           video_dir=(self.video_dir / f"step_{step:07d}") if video_eps else None,
                           progress=self.progress and rank == 0, desc=f"eval@{step}")
            payload.update(records=run.records, seconds=run.seconds, rollout_seconds=run.rollout_seconds,
                           warnings=run.warnings)
        except UserError:
            raise
        except Exception as e:  # keep training: record this rank's episodes as failed, retry with a fresh pool
            err = format_exc(e)
            say(f"warning: rank {rank}: evaluation at step {step} failed ({err}); its {len(mine)} episodes "
                 f"are recorded as failed")
            self.close()
            payload["records"] = [EpisodeResult(episode=i, seed=episode_seed(self.seed, i), attempts=0,
                                                error=err).to_dict() for i in mine]
            payload["warnings"] = [f"evaluation failed: {err}"]
        finally:
            pl_module.train(was_training)
        return payload

    @staticmethod
    def _all_gather(trainer: L.Trainer, payload: dict) -> list[dict]:
        if trainer.world_size <= 1:
            return [payload]
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return [payload]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, payload)
        return gathered

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """Run one evaluation now (all ranks must call it); returns the summary (the same on every rank)."""
        step = int(trainer.global_step)
        payload = self._run_local(trainer, pl_module, step)
        gathered = self._all_gather(trainer, payload)
        records = sorted((r for p in gathered for r in p["records"]), key=lambda r: r["episode"])
        summary = summarize(records, seconds=max(p["seconds"] for p in gathered),
                            rollout_seconds=max(p["rollout_seconds"] for p in gathered))
        self.last_eval_step, self.last_summary, self.last_records = step, summary, records

        metrics = {name: float(summary[key]) for key, name in METRIC_KEYS.items()
                   if summary.get(key) is not None}
        for name, v in metrics.items():  # identical on every rank
            trainer.callback_metrics[name] = torch.tensor(v)
        for logger in trainer.loggers:  # loggers write on rank 0 only
            logger.log_metrics(metrics, step=step)

        improved = summary["success_rate"] > self.best_success_rate  # same decision on every rank
        if improved:
            self.best_success_rate, self.best_step = float(summary["success_rate"]), step
        if trainer.is_global_zero:
            videos = [r["video"] for r in records if r.get("video")]
            write_json_atomic(self.json_path(trainer, step), {
                "step": step, "episodes": self.episodes, "seed": self.seed, "deterministic": self.deterministic,
                "weights": "ema" if getattr(pl_module, "act_with_ema", False) else "trained",
                "world_size": trainer.world_size, "workers_per_rank": self.workers,
                # what the pool runs with (fewer envs than asked for a short run, one with the policy in a worker)
                "envs_per_worker": self._pool.envs_per_worker if self._pool is not None else self.envs_per_worker,
                "policy_in": "workers" if self._pool is not None and self._pool.policy_in_workers else "parent",
                "best": {"success_rate": self.best_success_rate, "step": self.best_step},
                "summary": summary, "records": records,
                "warnings": [w for p in gathered for w in p["warnings"]],
            })
            say(f"eval @ step {step}: success {summary['successes']}/{summary['episodes']} "
                 f"({summary['success_rate']:.3f}, 95% CI [{summary['success_ci95_low']:.3f}, "
                 f"{summary['success_ci95_high']:.3f}]), return {summary['mean_return']:.3f}, "
                 f"length {summary['mean_length']:.1f}, {summary.get('env_steps_per_s', float('nan')):.1f} env steps/s"
                 + (f"; new best -> {self.best_path(trainer)}" if improved and self.save_best else ""))
            if videos:
                self._log_videos(trainer, videos, step)
        if improved and self.save_best:
            self._save_best(trainer)
        return summary

    def _save_best(self, trainer: L.Trainer) -> None:
        # every rank (ends in a barrier); rank 0 writes, atomically (the trainer's AtomicCheckpointIO)
        trainer.save_checkpoint(str(self.best_path(trainer)))

    @staticmethod
    def _log_videos(trainer: L.Trainer, videos: list[str], step: int) -> None:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except Exception:  # pragma: no cover
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    logger.log_video("eval/video", videos=list(videos), step=step,
                                     caption=[Path(v).stem for v in videos], format=["mp4"] * len(videos))
                except Exception as e:  # videos are a by-product
                    say(f"warning: eval videos not logged to wandb ({format_exc(e)})")


def default_eval_workers(episodes_per_rank: int, processes_per_node: int = 1) -> int:
    """Env workers per rank: one per CPU core this rank can spare, at most 8 and at most its episodes."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    per_rank = max(1, cpus // max(1, processes_per_node))
    return max(1, min(episodes_per_rank, per_rank, 8))


def make_eval_callback(cfg, output_dir: "str | os.PathLike") -> Optional[EvalCallback]:
    """The :class:`EvalCallback` a training config asks for, or None when ``cfg.eval_every`` is 0.

    Reads ``cfg.eval_every``, ``cfg.eval_episodes``, ``cfg.seed``, ``cfg.devices``, ``cfg.num_nodes`` and,
    when the config has them, ``eval_workers`` (default: one per spare core, <= 8), ``eval_videos``
    (episodes with a video per evaluation, default 2, 0 = none; written to ``<output_dir>/eval/videos``)
    and ``eval_deterministic`` (default True). Files go under ``output_dir`` (the run folder).
    """
    every = int(getattr(cfg, "eval_every", 0) or 0)
    if every <= 0:
        return None
    episodes = int(cfg.eval_episodes)
    world = max(1, int(getattr(cfg, "devices", 1)) * int(getattr(cfg, "num_nodes", 1)))
    per_rank = -(-episodes // world)
    workers = getattr(cfg, "eval_workers", None) or default_eval_workers(per_rank, int(getattr(cfg, "devices", 1)))
    videos = getattr(cfg, "eval_videos", 2)
    videos = 2 if videos is None else int(videos)
    out = Path(output_dir)
    return EvalCallback(every_n_steps=every, episodes=episodes, workers=int(workers), seed=int(cfg.seed),
                        video_dir=(out / "eval" / "videos") if videos > 0 else None, video_episodes=videos,
                        output_dir=out, deterministic=bool(getattr(cfg, "eval_deterministic", True)),
                        horizon=getattr(cfg, "eval_horizon", None),
                        envs_per_worker=int(getattr(cfg, "eval_envs_per_worker", ENVS_PER_WORKER)),
                        policy_in=str(getattr(cfg, "eval_policy_in", POLICY_IN)))
