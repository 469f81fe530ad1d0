"""Training throughput: the real pipeline (``train.run``: Lightning Trainer, resident replay, batched
augmentation, the CQL+DR3 update) against the compute-only bound (the same update on one fixed batch already
on the device); DR3 on vs off; and (on a GPU) scaling with batch size, encoder, bf16 and ``torch.compile``.

Timing: after ``warmup`` steps, ``reps`` blocks of ``block`` steps each; a block's figure is steps / seconds
(CUDA synchronized at block boundaries only, as the training loop itself never syncs). Diagnostics are
logged once at the very end (``log_every`` = the run's length), outside the timed blocks: in a real run they
cost one host sync every ``log_every`` (100) steps.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import Row, Timing, cuda_sync_for, judge, ratio_row, skipped, timing_row
from visual_dr3.errors import say
from visual_dr3.learner.config import TrainConfig, to_dict


class BlockTimer(Callback):
    """Steps/s of consecutive blocks of ``block`` training steps after ``warmup`` steps."""

    def __init__(self, warmup: int, block: int, sync):
        self.warmup, self.block, self.sync = warmup, block, sync
        self.t0: Optional[float] = None
        self.rates: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step
        if done < self.warmup or (done - self.warmup) % self.block:
            return
        self.sync()
        now = time.perf_counter()
        if self.t0 is not None:
            self.rates.append(self.block / (now - self.t0))
        self.t0 = now


def train_config(dataset: str, out: str, batch: int, steps: int, device: str, *, dr3: float = 0.01,
                 features: str = "encoder", encoder: str = "drq", precision: str = "32-true",
                 compile: bool = False, task: str = "lift") -> TrainConfig:
    """The run's config: defaults of ``train.py`` except what a benchmark must fix (no logging in between)."""
    cfg = TrainConfig(task=task, dataset=dataset, output_dir=out, batch_size=batch, max_steps=steps,
                      log_every=steps, checkpoint_every=10 * steps, wandb="off", progress=False,
                      accelerator="gpu" if torch.device(device).type == "cuda" else "cpu",
                      precision=precision, compile=compile)
    cfg.dr3.coef, cfg.dr3.features, cfg.model.encoder = dr3, features, encoder
    return cfg


def pipeline_rate(cfg: TrainConfig, warmup: int, block: int, reps: int, device: str) -> Timing:
    """Steps/s of the real training run (``visual_dr3.app.train.run``), per block."""
    from visual_dr3.app.train import run

    timer = BlockTimer(warmup, block, cuda_sync_for(device))
    cfg = copy.deepcopy(cfg)
    cfg.max_steps = warmup + block * reps + 1  # the last step logs diagnostics: outside the blocks
    cfg.log_every = cfg.max_steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg.output_dir = str(Path(tmp) / "run")
        run(cfg, extra_callbacks=[timer])
    return Timing(timer.rates[:reps])


#: dense peak FLOP/s by GPU name (NVIDIA data sheets, SXM parts): bf16 tensor cores, and the fp32 runs' TF32
#: (train.run sets float32 matmul precision "high"). The FLOPs counted are the matmuls' and convolutions'
#: (2 per multiply-add); elementwise work is left out, as in the usual MFU.
PEAK_FLOPS = {"H100": {"bf16-mixed": 989.4e12, "32-true": 494.7e12},
              "H200": {"bf16-mixed": 989.4e12, "32-true": 494.7e12},
              "A100": {"bf16-mixed": 312e12, "32-true": 156e12}}


def peak_flops(device: str, precision: str) -> Optional[float]:
    """The device's dense peak FLOP/s at ``precision``, or None (CPU, or a GPU not in :data:`PEAK_FLOPS`)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v.get(precision) for k, v in PEAK_FLOPS.items() if k in name), None)


def _module_and_batch(cfg: TrainConfig, device: str):
    """(module, optimizers, batch, generator) of one update on ``device``, as the training step sees them."""
    from visual_dr3.app.dataset import peek_dataset
    from visual_dr3.envs.tasks import get_task
    from visual_dr3.learner.datamodule import ReplayDataModule, augment_batch
    from visual_dr3.learner.module import DR3CQL

    task = get_task(cfg.task)
    info = peek_dataset(Path(cfg.dataset), task.image_keys, task.proprio_keys)
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    module = DR3CQL(to_dict(cfg), list(task.image_keys), list(task.proprio_keys), info["proprio_dim"],
                    info["image_size"], task.action_dim).to(dev)
    opt = module.configure_optimizers()
    dm = ReplayDataModule(cfg, cfg.dataset, list(task.image_keys), list(task.proprio_keys), task.action_dim)
    dm.setup()
    dm.replay = dm.replay.to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    batch = augment_batch(dm.replay.sample(cfg.batch_size, gen), cfg.data.augment_pad, gen)
    return module, opt, batch, gen


def update_flops(cfg: TrainConfig, device: str) -> float:
    """FLOPs of one training update (forward and backward of critic, actor and temperature), counted by
    ``torch.utils.flop_counter`` on one step of the real update (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    module, opt, batch, gen = _module_and_batch(cfg, device)
    counter = FlopCounterMode(display=False)
    with counter:
        module.backward_step(batch, 10_000, opt, gen, lambda loss: loss.backward())
    return float(counter.get_total_flops())


def fixed_batch_rate(cfg: TrainConfig, warmup: int, block: int, reps: int, device: str) -> Timing:
    """Steps/s of the same update on one batch that is sampled and augmented once (the compute-only bound).

    Each step is ``DR3CQL.training_step`` without Lightning: ``backward_step`` (forward, backward, guarded
    gradient norms, clipping) and ``optimizer_step`` (Adam, Polyak); only sampling and augmentation are gone.
    """
    from visual_dr3.app.train import apply_compute_settings

    apply_compute_settings(cfg)  # as train.run does: not inherited from whatever ran before in this process
    torch.backends.cudnn.benchmark = False  # Lightning's default when the Trainer is not told
    module, opt, batch, gen = _module_and_batch(cfg, device)
    dev = torch.device(device)
    if cfg.compile:
        module.encoder.compile()
        module.q.compile()
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.precision == "bf16-mixed"
                else torch.autocast(dev.type, enabled=False))
    sync = cuda_sync_for(device)

    def step(i: int) -> None:
        with autocast:
            module.backward_step(batch, 10_000 + i, opt, gen, lambda loss: loss.backward())
        module.optimizer_step(opt)

    for i in range(warmup):
        step(i)
    sync()
    rates = []
    for r in range(reps):
        t0 = time.perf_counter()
        for i in range(block):
            step(warmup + r * block + i)
        sync()
        rates.append(block / (time.perf_counter() - t0))
    return Timing(rates)


def pipeline_and_dr3(dataset: str, s, device: str) -> list[Row]:
    """Cases 1 (pipeline efficiency) and 3 (DR3 overhead) at the suite's batch and image size."""
    tag = f"batch {s.batch}, {s.image_size}x{s.image_size} x2 cams, drq"
    mk = lambda **kw: train_config(dataset, "", s.batch, 0, device, **kw)  # noqa: E731
    on = pipeline_rate(mk(dr3=0.01), s.warmup, s.block, s.reps, device)
    bound = fixed_batch_rate(mk(dr3=0.01), s.warmup, s.block, s.reps, device)
    off = pipeline_rate(mk(dr3=0.0), s.warmup, s.block, s.reps, device)
    pen = pipeline_rate(mk(dr3=0.01, features="penultimate"), s.warmup, s.block, s.reps, device)
    rows = [
        timing_row("pipeline", f"train.py steps/s, DR3 on ({tag})", on, "steps/s"),
        timing_row("pipeline", "compute-only bound steps/s (same update, fixed batch on device)", bound, "steps/s"),
        ratio_row("pipeline", "pipeline efficiency = end-to-end / bound", on, bound, target=0.95),
        timing_row("dr3", f"train.py steps/s, DR3 off (c0 = 0) ({tag})", off, "steps/s"),
        timing_row("dr3", "train.py steps/s, DR3 on, penultimate features", pen, "steps/s"),
        ratio_row("dr3", "time per step, DR3 on (encoder) / off", off, on, target=1.10, lower_is_better=True),
        ratio_row("dr3", "time per step, DR3 on (penultimate) / off", off, pen, target=1.10, lower_is_better=True),
    ]
    return rows


def scaling(dataset: str, s, device: str, force_cpu: bool = False) -> list[Row]:
    """Case 7: steps/s over batch x encoder x precision x compile (GPU; on CPU only with ``force_cpu``)."""
    if torch.device(device).type != "cuda" and not force_cpu:
        return [skipped("scaling", "batch / encoder / bf16 / compile grid", "no GPU (--device cuda)")]
    rows = []
    on_gpu = torch.device(device).type == "cuda"
    precisions = ["32-true", "bf16-mixed"]
    compiles = [False, True] if (on_gpu or not s.quick) else [False]
    grid = [(b, e, p, c) for b in s.scaling_batches for e in ("drq", "resnet18") for p in precisions for c in compiles]
    flops_of: dict = {}
    for batch, encoder, precision, comp in grid[:getattr(s, "grid_configs", None)]:
        if (batch, encoder) not in flops_of:
            flops_of[batch, encoder] = update_flops(train_config(dataset, "", batch, 0, device,
                                                                 encoder=encoder), device)
        flops, peak = flops_of[batch, encoder], peak_flops(device, precision)
        cfg = train_config(dataset, "", batch, 0, device, encoder=encoder, precision=precision,
                           compile=comp)
        t = pipeline_rate(cfg, s.warmup + (3 if comp else 0), s.block, s.reps, device)
        name = (f"train.py steps/s, batch {batch}, {encoder}, {precision}, "
                f"compile {'on' if comp else 'off'}")
        mfu = (f"MFU {100 * flops * t.median / peak:.1f}%" if peak else "MFU - (no peak known for "
               f"{'this GPU' if torch.device(device).type == 'cuda' else 'a CPU'})")
        row = timing_row("scaling", name, t, "steps/s",
                         note=f"{batch * t.median:,.0f} samples/s; {flops / 1e9:,.1f} GFLOP/update; {mfu}")
        rows.append(row)
        say(f"[scaling] {name}: {t.median:.3g} steps/s; {row.note}")  # seen even if the grid is cut short
    if on_gpu:
        rows.append(skipped("scaling", "DDP efficiency", f"{torch.cuda.device_count()} GPU visible")
                    if torch.cuda.device_count() < 2 else ddp_efficiency(dataset, s, device))
    return rows


def ddp_efficiency(dataset: str, s, device: str) -> Row:
    """Samples/s on all visible GPUs over 1 GPU, through ``train.py`` in subprocesses (per-device batch fixed)."""
    import csv
    import subprocess
    import sys

    n = torch.cuda.device_count()
    rates = {}
    for devices in (1, n):
        with tempfile.TemporaryDirectory() as tmp:
            steps = s.warmup + s.block * s.reps
            cmd = [sys.executable, "train.py", "--task", "lift", "--dataset", dataset, "--output-dir", tmp + "/r",
                   "--batch-size", str(s.batch), "--max-steps", str(steps), "--log-every", str(s.block),
                   "--devices", str(devices), "--accelerator", "gpu", "--wandb", "off", "--progress", "false"]
            subprocess.run(cmd, check=True, capture_output=True)
            with open(Path(tmp) / "r" / "metrics.csv") as f:
                vals = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
            rates[devices] = Timing(vals[-s.reps:])
    eff = rates[n].median / (n * rates[1].median)
    spread = rates[n].spread + rates[1].spread
    tgt, met, noisy = judge(eff, spread, 0.9)
    return Row("scaling", f"DDP efficiency, {n} GPUs (samples/s over {n} x 1 GPU)", eff, "x", spread, tgt, met,
               reps=s.reps, noisy=noisy)
