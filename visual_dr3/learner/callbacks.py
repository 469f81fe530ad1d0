"""Lightning callbacks of a training run: a step progress bar with ETA, the final summary, the last save."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

SHOWN = ("critic_loss", "cql_loss", "dr3_dot", "srank", "q_mean")


class StepProgress(Callback):
    """tqdm over gradient steps (total = max_steps, with ETA); shows the latest logged diagnostics."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: Optional[tqdm] = None
        self.start_time = 0.0
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_time, self.start_step = time.perf_counter(), trainer.global_step
        if self.enabled and trainer.is_global_zero:
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        if trainer.global_step % pl_module.cfg.log_every == 0:  # a step whose diagnostics were just logged
            m = trainer.callback_metrics
            self.bar.set_postfix({k: f"{float(m[k]):.3g}" for k in SHOWN if k in m}, refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FinalCheckpoint(Callback):
    """Writes ``checkpoints/last.ckpt`` when training ends, whatever the step (Lightning saves on its schedule)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(str(self.path))
