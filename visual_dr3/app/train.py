"""``python train.py --task pick_place``: make the dataset if missing, then train CQL + DR3 with Lightning.

The application layer: it owns the run (:func:`run`), the run folder's checks, the loggers and the wiring of
the learner (:mod:`visual_dr3.learner`) with the datasets (:mod:`visual_dr3.app.dataset`) and the evaluation
callback (:mod:`visual_dr3.evaluation.callback`)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from visual_dr3.app.cli_args import CONFIGS_DIR, dump_yaml, parse_train_args
from visual_dr3.app.dataset import dataset_info, rank, resolve_dataset
from visual_dr3.errors import EXIT_DIVERGED, UserError, cli_entry, say
from visual_dr3.fileio import ensure_writable_dir, write_text_atomic
from visual_dr3.learner.config import TrainConfig, to_dict

# Lightning/torch messages that do not apply to this setup (a resident on-device replay needs no workers;
# checkpoints are taken after the step on purpose; the run folder is ours).
QUIET_WARNINGS = (".*does not have many workers.*", ".*IterableDataset.*", ".*pre-optimization state.*",
                  ".*exists and is not empty.*", ".*LeafSpec.*", ".*weights_only.*", ".*anonymous setting.*")
PRESET_WHY = {"cpu": "visual_dr3/configs/cpu/<task>.yaml over <task>.yaml: the task's method at small images and a "
                     "short schedule that learns on a few CPU cores",
              "gpu": "visual_dr3/configs/gpu/<task>.yaml over <task>.yaml: the same method at full scale",
              "none": "no preset file: the code's defaults"}


def check_run_folder(out: Path, cfg: TrainConfig) -> None:
    """Refuse to train over an existing run unless ``--resume`` or ``--overwrite`` says so.

    With ``--overwrite`` (and no ``--resume``) the old run's checkpoints and metrics are removed first, so a
    later ``--resume auto`` cannot pick up the replaced run's checkpoint.
    """
    held = [name for name in ("config.yaml", "checkpoints/last.ckpt") if (out / name).is_file()]
    if not held or cfg.resume is not None:
        return
    if not cfg.overwrite:
        raise UserError(f"--output-dir {out}: already holds a run ({', '.join(held)}); pass --resume auto to "
                        f"continue it, --overwrite true to replace it, or another --output-dir")
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    (out / "metrics.csv").unlink(missing_ok=True)


def check_devices(cfg: TrainConfig) -> None:
    """``--devices`` more than the GPUs this machine has is a one-line error (CPU processes are not limited)."""
    import torch

    wants_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if wants_gpu:
        have = torch.cuda.device_count()
        if cfg.devices > have:
            raise UserError(f"--devices {cfg.devices}: only {have} GPU(s) visible on this machine "
                            f"(--accelerator {cfg.accelerator}); expected at most {have}, or --accelerator cpu")


def build_trainer(cfg: TrainConfig, out: Path, extra_callbacks: Sequence = (), resume_step: Optional[int] = None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    from visual_dr3.app.ranks import WatchRanks
    from visual_dr3.learner.callbacks import FinalCheckpoint, GracefulStop, LogLastStep, StepProgress
    from visual_dr3.learner.resume import AtomicCheckpointIO, ResumeState

    from visual_dr3.learner.csvlog import RunCSVLogger

    # metrics.csv; on a resume the rows logged before the checkpoint are kept (Lightning's would delete them)
    loggers = [RunCSVLogger(str(out), resume_step, flush_every=cfg.log_every)]
    if cfg.wandb != "off":
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(project="visual-dr3", save_dir=str(out), offline=cfg.wandb == "offline",
                                   name=out.name, config=None))
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(out), name="tensorboard", version=""))
    ckpt_dir = out / "checkpoints"
    from visual_dr3.evaluation.callback import make_eval_callback

    eval_cb = make_eval_callback(cfg, out)  # None when --eval-every 0
    callbacks = [
        *([eval_cb] if eval_cb is not None else []),
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=cfg.checkpoint_every, save_top_k=0, save_last=True,
                        enable_version_counter=False),
        FinalCheckpoint(ckpt_dir / "last.ckpt"),
        StepProgress(enabled=cfg.progress),
        ResumeState(),
        GracefulStop(),
        LogLastStep(),
        *([WatchRanks(out)] if cfg.devices * cfg.num_nodes > 1 else []),
        *extra_callbacks,
    ]
    strategy = "auto" if cfg.devices * cfg.num_nodes == 1 else "ddp"
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy,
        precision=cfg.precision, max_steps=cfg.max_steps, max_epochs=-1, logger=loggers, callbacks=callbacks,
        # The module logs at steps s with (s + 1) % log_every == 0 (and the last), when Lightning writes rows.
        log_every_n_steps=cfg.log_every, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=cfg.deterministic, default_root_dir=str(out),
        use_distributed_sampler=False, benchmark=not cfg.deterministic, plugins=[AtomicCheckpointIO()])


def apply_compute_settings(cfg) -> None:
    """The process-wide compute settings of a training run: TF32 matmuls (float32 precision "high"), and on a
    CPU one thread per core this process owns (``OMP_NUM_THREADS``, when set, rules). The benchmarks' compute-only
    bound applies the same, so that its figure does not depend on what ran before it in the process."""
    import torch

    torch.set_float32_matmul_precision("high")
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, cfg.devices)))


def run(cfg: TrainConfig, extra_callbacks: Sequence = (), datamodule_factory=None) -> dict:
    """Train one run; returns the summary dict (also printed by :func:`main`)."""
    import logging

    import lightning as L

    from visual_dr3.checkpoint import check_resume_compatible
    from visual_dr3.envs.tasks import get_task

    # Lightning's info lines (device listing, tips) give way to our own progress bar and summary.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)  # "Initializing distributed: ..." per rank
    from visual_dr3.learner.datamodule import ReplayDataModule
    from visual_dr3.learner.module import DR3CQL, TrainingDiverged

    task = get_task(cfg.task)
    if rank() == 0:
        _say_preset(cfg)
    dataset = resolve_dataset(cfg, task)
    out, resume = prepare_run_folder(cfg, task)
    check_devices(cfg)
    image_keys, proprio_keys = list(task.image_keys), list(task.proprio_keys)
    info = dataset_info(dataset, task)

    from visual_dr3.data.replay import SourceSpec
    from visual_dr3.data.stats import dataset_stats

    sources = [SourceSpec(path=s.path or str(dataset), filter_key=s.filter_key) for s in cfg.data.sources]
    stats = dataset_stats(sources, image_keys, proprio_keys, task.action_dim)
    resume_step = None
    if resume is not None:
        resume_step = check_resume_compatible(resume, cfg, info["image_size"])
    if rank() == 0:
        write_text_atomic(out / "config.yaml", dump_yaml(cfg))

    apply_compute_settings(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = DR3CQL(to_dict(cfg), image_keys=image_keys, proprio_keys=proprio_keys,
                    proprio_dim=info["proprio_dim"], image_size=info["image_size"], action_dim=task.action_dim,
                    env_args=info["env_args"], dataset_meta=info["meta"], dataset_stats=stats)
    if cfg.compile:  # in place: parameter names (and so checkpoints) stay those of the plain module
        module.encoder.compile()
        module.q.compile()
    make_dm = datamodule_factory or ReplayDataModule
    dm = make_dm(cfg, str(dataset), image_keys, proprio_keys, task.action_dim, info["image_size"],
                 learned_dims=module.learned_dims)
    trainer = build_trainer(cfg, out, extra_callbacks, resume_step=resume_step)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        for msg in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=resume)
        except TrainingDiverged as e:
            last = out / "checkpoints" / "last.ckpt"
            kept = f"last good checkpoint {last}" if last.is_file() else "no checkpoint was saved"
            raise DivergedError(f"{e}; {kept} (try a lower --algo.critic_lr or --algo.grad_clip)") from None
    return _summary(cfg, task, dataset, out, trainer, dm, time.perf_counter() - t0)


def _say_preset(cfg: TrainConfig) -> None:
    import torch

    if cfg.preset not in PRESET_WHY:  # a TrainConfig built in code (benchmarks), not through the CLI's presets
        say(f"[visual-dr3] preset {cfg.preset}: the config as built, no preset file layered", stdout=True)
        return
    cuda = torch.cuda.is_available()
    why = ("forced by --preset or VISUAL_DR3_PRESET" if cfg.preset == "none" or (cfg.preset == "gpu") != cuda
           else "CUDA device visible" if cuda else "no CUDA device visible")
    say(f"[visual-dr3] preset {cfg.preset} ({why}): {PRESET_WHY.get(cfg.preset, '')}; --preset cpu|gpu|none "
        f"forces one", stdout=True)


def prepare_run_folder(cfg: TrainConfig, task) -> tuple[Path, Optional[str]]:
    """``(output folder, checkpoint to resume from or None)``: the folder checked (rank 0) and writable,
    ``--resume auto`` resolved to ``checkpoints/last.ckpt`` when there is one."""
    out = Path(cfg.output_dir or f"runs/{task.name}")
    if rank() == 0:  # the other ranks start after rank 0 has written config.yaml
        check_run_folder(out, cfg)
    out = ensure_writable_dir(out, "--output-dir")
    resume = cfg.resume
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
    elif resume is not None and not Path(resume).is_file():
        raise UserError(f"--resume {resume}: checkpoint not found")
    return out, resume


def _summary(cfg: TrainConfig, task, dataset: Path, out: Path, trainer, dm, seconds: float) -> dict:
    from visual_dr3.learner.callbacks import GracefulStop

    stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = {
        "task": task.name, "algorithm": cfg.algorithm, "preset": cfg.preset, "dataset": str(dataset),
        "output_dir": str(out), "steps": trainer.global_step,
        "seconds": round(seconds, 1), "steps_per_s": round(trainer.global_step / max(seconds, 1e-9), 2),
        "transitions": getattr(getattr(dm, "replay", None), "num_transitions", None),
        "last_checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "metrics": {k: m[k] for k in ("critic_loss", "cql_loss", "dr3_loss", "dr3_dot", "dr3_cos", "srank",
                                      "q_mean", "actor_loss", "alpha") if k in m},
    }
    if stop is not None and stop.received is not None:
        summary["stopped_by_signal"] = int(stop.received)
    return summary


def print_summary(s: dict) -> None:
    print("\n== visual-dr3 training summary ==")
    for k in ("task", "algorithm", "preset", "dataset", "transitions", "steps", "seconds", "steps_per_s",
              "output_dir", "last_checkpoint"):
        print(f"  {k:16s} {s[k]}")
    for k, v in s["metrics"].items():
        print(f"  {k:16s} {v:.4g}")


class DivergedError(Exception):
    """Training stopped on non-finite values; the CLI prints it as one line and exits with EXIT_DIVERGED."""


def _diverged_exit(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DivergedError as e:
            say(f"error: {e}")
            raise SystemExit(EXIT_DIVERGED) from None

    return wrapper


@_diverged_exit
@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> dict:
    from visual_dr3.learner.callbacks import ForcedExit

    cfg = parse_train_args(sys.argv[1:] if argv is None else argv, configs_dir=CONFIGS_DIR)
    try:
        summary = run(cfg)
    except ForcedExit as e:
        import signal

        say(f"stopped at once by a second {signal.Signals(e.signum).name}: no checkpoint written at this step "
            f"(the last one on disk is whole; continue with --resume auto)")
        raise
    if rank() == 0 and summary is not None:
        print_summary(summary)
    if summary is not None and summary.get("stopped_by_signal"):
        import signal

        signum = summary["stopped_by_signal"]
        say(f"stopped by {signal.Signals(signum).name} at step {summary['steps']}; checkpoint "
            f"{summary['last_checkpoint']} (continue with --resume auto)")
        raise SystemExit(128 + signum)
    return summary
