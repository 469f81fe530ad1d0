"""What exact resume needs beyond Lightning's checkpoint: every rank's RNG states, and atomic checkpoint files.

Lightning checkpoints hold weights, optimizer and loop state, but no RNG state, and under DDP only rank 0's
``state_dict`` of the datamodule and module. :class:`ResumeState` gathers, from every rank, the global RNGs
(torch CPU, CUDA when available, numpy, python ``random``), the datamodule's sampling/augmentation generator
(the state of the first batch not yet consumed, see ``ReplayDataModule.state_dict``) and the module's update
generator, and stores them in the checkpoint under ``visual_dr3_resume`` as one entry per rank. A resumed
run with the same world size gives each rank its own entry back; with another world size the generators of
ranks not in the checkpoint keep their fresh seeds (and a warning says the resume is not exact).

:class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder, fsyncs it and renames
it over the target, so a crash or kill mid-write leaves the previous file intact; it reads one (``--resume``)
with ``weights_only=True``, so a crafted file runs nothing.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from visual_dr3.fileio import atomic_path

KEY = "visual_dr3_resume"


def _rank_state(trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "state_dict"):
        state["datamodule"] = dm.state_dict()
    gen = getattr(pl_module, "update_generator", None)
    if gen is not None:
        state["update_generator"] = gen.get_state()
    return state


def _numpy_state() -> dict:
    """numpy's global RNG state as tensors and numbers (checkpoints load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(st: dict) -> None:
    np.random.set_state((st["name"], st["keys"].numpy().astype(np.uint32), st["pos"], st["has_gauss"],
                         st["cached_gaussian"]))


class ResumeState(Callback):
    """Saves and restores every rank's RNG and generator states (see the module docstring)."""

    def __init__(self) -> None:
        self._global_rng: Optional[dict] = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Called on every rank (the save itself happens on rank 0), so the gather is a collective.
        mine = _rank_state(trainer, pl_module)
        world = trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * world
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        checkpoint[KEY] = {"world_size": world, "ranks": states}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get(KEY)
        if saved is None:
            return
        rank = trainer.global_rank
        if saved["world_size"] != trainer.world_size:
            warnings.warn(f"checkpoint saved with {saved['world_size']} processes, resumed with "
                          f"{trainer.world_size}: sampling continues, but not exactly as it would have")
        if rank >= len(saved["ranks"]):
            return
        st = saved["ranks"][rank]
        dm = trainer.datamodule
        if "datamodule" in st and dm is not None and hasattr(dm, "load_state_dict"):
            dm.load_state_dict(st["datamodule"])
        if "update_generator" in st:
            pl_module._pending_generator_state = st["update_generator"]
        self._global_rng = st  # applied at train start, after Lightning's own set-up has used the RNGs

    def on_train_start(self, trainer, pl_module) -> None:
        st, self._global_rng = self._global_rng, None
        if st is None:
            return
        torch.set_rng_state(st["torch"])
        _set_numpy_state(st["numpy"])
        random.setstate(st["python"])
        if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(st["cuda"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "batch_consumed"):
            dm.batch_consumed()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints are written through :func:`visual_dr3.fileio.atomic_path`; URLs as usual."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        """Local checkpoints (``train.py --resume``) load without running code
        (:func:`visual_dr3.safe_load.load_weights_only`); URLs as Lightning does."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        from visual_dr3.safe_load import load_weights_only

        return load_weights_only(path, flag="--resume")


def save_atomic(obj: Any, path) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`visual_dr3.fileio.atomic_path`). torch writes through a
    Python file, so a full disk or a read-only folder is an ``OSError`` with its errno (a path given to torch
    gives a bare "unexpected pos"), which ``atomic_path`` turns into one line naming ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    return Path(path)
