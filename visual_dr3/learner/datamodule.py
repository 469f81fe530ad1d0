"""LightningDataModule around the resident replay: an endless stream of augmented batches on the device.

Each rank loads the whole dataset once (uint8, on its device when it fits) and samples its own batches with
a generator seeded by ``seed + 1000 * rank``, so ranks see different batches and augmentations while the
weights (seeded by ``seed`` alone) start identical. Batches are gathered by index on the device; no worker
processes, no copies through host memory.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from visual_dr3.data.augment import random_shift
from visual_dr3.data.replay import Batch, ResidentReplay, SourceSpec, load_replay
from visual_dr3.learner.config import TrainConfig

RANK_SEED_STRIDE = 1000


def augment_batch(batch: Batch, pad: int, generator: torch.Generator) -> Batch:
    """DrQ random shift of every camera of s and s' in one batched call (independent shift per image)."""
    if pad <= 0:
        return batch
    for key in batch.obs:
        if batch.obs[key].dtype != torch.uint8:
            continue
        both = torch.cat([batch.obs[key], batch.next_obs[key]])
        both = random_shift(both, pad, generator)
        n = batch.obs[key].shape[0]
        batch.obs[key], batch.next_obs[key] = both[:n], both[n:]
    return batch


class ReplayStream(IterableDataset):
    """Endless iterator of batches sampled from a :class:`ResidentReplay` with one generator."""

    def __init__(self, replay: ResidentReplay, batch_size: int, augment_pad: int, generator: torch.Generator,
                 pending: Optional[deque] = None):
        super().__init__()
        self.replay, self.batch_size, self.augment_pad, self.generator = replay, batch_size, augment_pad, generator
        # The generator's state before each batch yielded and not yet consumed by a training step (Lightning
        # prefetches, so the generator runs ahead of the steps; see ReplayDataModule.state_dict).
        self.pending = pending if pending is not None else deque()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            self.pending.append(self.generator.get_state())
            batch = self.replay.sample(self.batch_size, self.generator)
            yield augment_batch(batch, self.augment_pad, self.generator)


def _identity(x):
    return x


class ReplayDataModule(L.LightningDataModule):
    """Loads the sources named by the config into a resident replay on this rank's device."""

    def __init__(self, cfg: TrainConfig, dataset: str, image_keys: list[str], proprio_keys: list[str],
                 action_dim: int, image_size: Optional[int] = None, learned_dims: Optional[list[int]] = None):
        super().__init__()
        self.learned_dims = None if learned_dims is None else list(learned_dims)
        self.cfg, self.dataset = cfg, dataset
        self.image_keys, self.proprio_keys = list(image_keys), list(proprio_keys)
        self.action_dim, self.image_size = action_dim, image_size
        self.replay: Optional[ResidentReplay] = None
        self.generator: Optional[torch.Generator] = None
        self._pending = deque()

    def source_specs(self) -> list[SourceSpec]:
        specs = [SourceSpec(path=s.path or self.dataset, filter_key=s.filter_key, weight=s.weight)
                 for s in self.cfg.data.sources]
        if self.cfg.algo.bc_filter is not None:  # filtered BC: only the demos the rule keeps
            from visual_dr3.data.filtering import filter_sources

            specs = filter_sources(specs, self.cfg.algo.bc_filter)
        return specs

    def setup(self, stage: Optional[str] = None) -> None:
        if self.replay is not None:
            return
        device = torch.device("cpu")
        rank = 0
        if self.trainer is not None:
            rank = self.trainer.global_rank
            if self.cfg.data.device == "auto":
                device = self.trainer.strategy.root_device
        self.replay = load_replay(self.source_specs(), self.image_keys, self.proprio_keys,
                                  action_dim=self.action_dim, device=device,
                                  expect_image_size=self.image_size, n_step=self.cfg.algo.n_step,
                                  discount=self.cfg.algo.discount, reward_scale=self.cfg.algo.reward_scale,
                                  reward_bias=self.cfg.algo.reward_bias)
        if self.learned_dims is not None and len(self.learned_dims) != self.replay.action_dim:
            self.replay.select_action_dims(self.learned_dims)  # the networks see only the learned dims
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.cfg.seed + RANK_SEED_STRIDE * rank)

    def train_dataloader(self) -> DataLoader:
        self._pending.clear()
        stream = ReplayStream(self.replay, self.cfg.batch_size, self.cfg.data.augment_pad, self.generator,
                              pending=self._pending)
        return DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_identity)

    def batch_consumed(self) -> None:
        """A training step took the oldest batch the stream yielded (called at each train batch start)."""
        if self._pending:
            self._pending.popleft()

    # Exact resume (the sampler's generator is part of the run's state). Lightning prefetches the next batch
    # before running the current step, so at save time the generator is ahead by the prefetched batches: save
    # the state from before the first batch not yet consumed, so a resumed run samples that batch again.
    def state_dict(self) -> dict:
        if self.generator is None:
            return {}
        return {"generator": self._pending[0].clone() if self._pending else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state and self.generator is not None:
            self.generator.set_state(state["generator"])
            self._pending.clear()
