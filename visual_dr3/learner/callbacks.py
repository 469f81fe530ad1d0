"""Lightning callbacks of a training run: a step progress bar with ETA, the final summary, the last save, the
last step's metrics row, a clean stop on a signal."""

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


class ForcedExit(SystemExit):
    """A second SIGTERM / SIGINT while a clean stop was under way: exit status ``128 + signal number``."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class GracefulStop(Callback):
    """SIGTERM / SIGINT stop training at the end of the current step; ``checkpoints/last.ckpt`` is then written
    by :class:`FinalCheckpoint` (``on_train_end``) and the CLI exits with ``128 + signal number``.

    The handler only sets a flag (checked at each batch end; under DDP the flag is all-reduced every step, so a
    signal to any rank stops all ranks at the same step). A second signal while stopping is a forced exit: the
    previous handlers come back, the other processes this one launched (DDP ranks started by Lightning) are
    killed, and :class:`ForcedExit` (a ``SystemExit`` with ``128 + signal number``) unwinds training
    (Lightning's teardown runs; no checkpoint is written, the last one on disk stays whole: writes are atomic).
    It does not hand the signal to
    the previous handler: under Lightning that is its SIGTERM notifier, whose ``SIGTERMException`` is a
    ``SystemExit`` without a code, so the forced exit used to end with status 0 as if training had finished.
    Replaces Lightning's own SIGTERM handler for the training loop (which would exit without saving); restored at
    the end of training.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.stopping = False  # every rank stops at this step (the end-of-run evaluation is skipped)
        self._previous: dict = {}
        self._launcher = None  # Lightning's launcher of the other local ranks, if this process started them

    def _handler(self, signum, frame) -> None:
        if self.received is not None:  # second signal: give up on the clean stop
            self._restore()
            if self._launcher is not None and hasattr(self._launcher, "kill"):
                from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal

                self._launcher.kill(_get_sigkill_signal())  # as Lightning does on its own forced exit
            raise ForcedExit(int(signum))
        self.received = signum  # no I/O here: the handler may interrupt a write to stdout

    def _restore(self) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        self._launcher = getattr(trainer.strategy, "launcher", None)
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            self.stopping = True
            if trainer.is_global_zero:
                print(f"[visual-dr3] stop requested by signal: saving checkpoints/last.ckpt at step "
                      f"{trainer.global_step}, then exiting without the end-of-run evaluation (signal again to "
                      f"exit at once)", flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


class LogLastStep(Callback):
    """Writes the last step's metrics row: Lightning writes logger rows only at steps with
    ``(step + 1) % log_every_n_steps == 0`` (or when ``trainer.should_stop``), so without this a run of
    ``max_steps`` not a multiple of ``log_every`` lost its last row, and one shorter than ``log_every`` left no
    ``metrics.csv`` at all. The module logs at the last step; this marks that step as the stop, which the fit
    loop reaches there anyway, so Lightning writes the row."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
