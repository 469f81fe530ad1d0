"""The resident replay in memory and its sampling: :class:`ResidentReplay`, :class:`Batch`, :func:`split_counts`.

:class:`ResidentReplay` holds what :func:`~visual_dr3.data.loading.load_replay` read (frames, proprio and
the transition arrays, on one device) and draws batches from it entirely in torch: an exact per-source count
(:func:`split_counts`, the largest-remainder split of the batch by the sources' weights), uniform indices
within each source from the caller's generator, then one gather of s and s' frames per camera. What is held,
how s' and a' are defined at demo boundaries and how sampling works is described in
:mod:`visual_dr3.data.replay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from visual_dr3.envs.tasks import PROPRIO_KEY

if TYPE_CHECKING:
    from visual_dr3.data.loading import SourceSpec

_RAND_HIGH = 2 ** 62  # uniform int64 draws reduced modulo the source size (bias <= size / 2**62)


@dataclass
class Batch:
    """A sampled batch; all tensors on the replay's device."""

    obs: dict[str, Tensor]  # image keys -> uint8 (B,3,H,W); "proprio" -> float32 (B,P)
    next_obs: dict[str, Tensor]  # same keys, s' = frame t+1 of the same demo (see visual_dr3.data.replay)
    action: Tensor  # float32 (B,A)
    reward: Tensor  # float32 (B,)
    done: Tensor  # float32 (B,)  1 = terminal (no bootstrap)
    next_action: Tensor  # float32 (B,A) dataset a_{t+1} (a_t at a demo's last step)
    source: Tensor  # int64 (B,) index of the SourceSpec the sample came from
    discount: Optional[Tensor] = None  # float32 (B,) gamma**k of an n-step backup over k steps (None: the config's)
    mc_return: Optional[Tensor] = None  # float32 (B,) the data's discounted return to go from (s_t, a_t), or None


def split_counts(batch_size: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``batch_size`` by ``weights`` (normalized; exact arithmetic, ties to the
    earlier entry). The counts sum to ``batch_size``; e.g. ``split_counts(256, [1, 1, 1]) == [86, 85, 85]``."""
    fr = [Fraction(int(w)) if isinstance(w, (int, np.integer)) else Fraction(float(w)) for w in weights]
    total = sum(fr)
    if total <= 0 or any(w < 0 for w in fr):
        raise ValueError(f"split_counts: weights {list(weights)} must be >= 0 with a positive sum")
    quotas = [Fraction(batch_size) * w / total for w in fr]
    counts = [int(q) for q in quotas]  # floor (quotas are >= 0)
    left = batch_size - sum(counts)
    order = sorted(range(len(fr)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _want_pin(device: torch.device, pin_memory: bool) -> bool:
    # Pinning needs a CUDA device; on a CPU-only machine pin_memory=True is ignored.
    return bool(pin_memory) and device.type == "cpu" and torch.cuda.is_available()


def _place(t: Tensor, device: torch.device, pin: bool) -> Tensor:
    t = t.to(device)
    if pin and not t.is_pinned():
        t = t.pin_memory()
    return t


class ResidentReplay:
    """The loaded dataset (see :mod:`visual_dr3.data.replay`). Build it with :func:`load_replay`.

    Attributes: ``image_keys``, ``proprio_keys`` (their sizes in ``proprio_dims``), ``proprio_dim``,
    ``action_dim``, ``image_size`` ((H, W), or None without image keys), ``num_transitions`` (distinct
    sampleable transitions over all sources), ``num_frames``, ``nbytes`` (resident bytes), ``env_args``
    (``data.attrs['env_args']`` of the first file, parsed), ``meta`` (``data.attrs['visual_dr3']`` of the
    first file, parsed, or ``{}``), ``metas`` (per file), ``files``, ``sources`` (the SourceSpecs),
    ``weights`` (normalized), ``source_sizes`` (sampleable transitions per source), ``device``.
    """

    def __init__(self, *, frames: dict[str, Tensor], proprio: Tensor, obs_index: Tensor, next_index: Tensor,
                 action: Tensor, next_action: Tensor, reward: Tensor, done: Tensor,
                 source_tables: list[Tensor], sources: list[SourceSpec], weights: Sequence[float],
                 image_keys: list[str], proprio_keys: list[str], proprio_dims: tuple[int, ...],
                 action_dim: int, image_size: Optional[tuple[int, int]], env_args: dict, meta: dict,
                 metas: list[dict], files: list[str], device: torch.device, pinned: bool = False,
                 discount: Optional[Tensor] = None, mc_return: Optional[Tensor] = None):
        self.frames = frames
        self.discount, self.mc_return = discount, mc_return
        self.proprio = proprio
        self.obs_index, self.next_index = obs_index, next_index
        self.action, self.next_action, self.reward, self.done = action, next_action, reward, done
        self.sources = list(sources)
        self._raw_weights = list(weights)  # as given (sizes when pooling by size): exact split_counts input
        wsum = float(sum(self._raw_weights))
        self.weights = [float(w) / wsum for w in self._raw_weights]
        self.source_sizes = [int(t.numel()) for t in source_tables]
        self.image_keys, self.proprio_keys = list(image_keys), list(proprio_keys)
        self.proprio_dims = tuple(proprio_dims)
        self.action_dim, self.image_size = int(action_dim), image_size
        self.env_args, self.meta, self.metas, self.files = env_args, meta, metas, files
        self.device, self.pinned = device, pinned
        # One table of transition ids for all sources; source s owns [offset[s], offset[s] + size[s]).
        self._src_table = _place(torch.cat(source_tables) if source_tables
                                 else torch.zeros(0, dtype=torch.int64), device, pinned)
        offsets = np.concatenate([[0], np.cumsum(self.source_sizes)[:-1]]).astype(np.int64)
        self._src_offset = _place(torch.from_numpy(offsets), device, pinned)
        # Size 1 for empty sources keeps the modulo defined; they get count 0 anyway (weight 0).
        self._src_size = _place(torch.tensor([max(s, 1) for s in self.source_sizes], dtype=torch.int64),
                                device, pinned)
        self.num_transitions = int(torch.unique(self._src_table).numel()) if self._src_table.numel() else 0
        self._src_ids_cache: dict[int, Tensor] = {}

    # ------------------------------------------------------------------ info
    @property
    def proprio_dim(self) -> int:
        return int(self.proprio.shape[1])

    @property
    def num_frames(self) -> int:
        return int(self.proprio.shape[0])

    def _tensors(self) -> list[Tensor]:
        return [*self.frames.values(), self.proprio, self.obs_index, self.next_index, self.action,
                self.next_action, self.reward, self.done, self._src_table, self._src_offset, self._src_size,
                *[t for t in (self.discount, self.mc_return) if t is not None]]

    @property
    def nbytes(self) -> int:
        """Bytes held by the replay's tensors (frames dominate)."""
        return int(sum(t.numel() * t.element_size() for t in self._tensors()))

    def batch_counts(self, batch_size: int) -> list[int]:
        """Samples per source in a batch of ``batch_size`` (largest-remainder split by the weights)."""
        return split_counts(batch_size, self._raw_weights)

    def describe(self) -> str:
        """One-line summary for logs."""
        src = "; ".join(f"{s.path}" + (f"[{s.filter_key}]" if s.filter_key else "") + f" n={n} w={w:.3g}"
                        for s, n, w in zip(self.sources, self.source_sizes, self.weights))
        hw = f"{self.image_size[0]}x{self.image_size[1]}" if self.image_size else "-"
        return (f"replay: {self.num_transitions} transitions, {self.num_frames} frames, cameras "
                f"{self.image_keys} {hw}, proprio {self.proprio_dim}, action {self.action_dim}, "
                f"{self.nbytes / 2**20:.1f} MiB on {self.device}{' (pinned)' if self.pinned else ''}; "
                f"sources: {src}")

    def __repr__(self) -> str:
        return f"ResidentReplay({self.describe()})"

    # ------------------------------------------------------------------ device
    def to(self, device: Union[str, torch.device], pin_memory: bool = False) -> "ResidentReplay":
        """Move every tensor to ``device`` (in place; returns self). ``pin_memory`` pins CPU tensors when a
        CUDA device exists (ignored otherwise). Generators passed to :meth:`sample` must then live there."""
        device = torch.device(device)
        pin = _want_pin(device, pin_memory)
        self.frames = {k: _place(v, device, pin) for k, v in self.frames.items()}
        for name in ("proprio", "obs_index", "next_index", "action", "next_action", "reward", "done",
                     "_src_table", "_src_offset", "_src_size"):
            setattr(self, name, _place(getattr(self, name), device, pin))
        for name in ("discount", "mc_return"):
            if getattr(self, name) is not None:
                setattr(self, name, _place(getattr(self, name), device, pin))
        self.device, self.pinned = device, pin
        self._src_ids_cache = {}
        return self

    # ------------------------------------------------------------------ sampling
    def _source_ids(self, batch_size: int) -> Tensor:
        ids = self._src_ids_cache.get(batch_size)
        if ids is None:
            counts = self.batch_counts(batch_size)
            ids = torch.as_tensor(np.repeat(np.arange(len(counts), dtype=np.int64), counts),
                                  dtype=torch.int64).to(self.device)
            self._src_ids_cache[batch_size] = ids
        return ids

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(transition ids (B,), source ids (B,))`` of a batch, on the device."""
        if batch_size <= 0:
            raise ValueError(f"sample: batch_size must be positive, got {batch_size}")
        if not _same_device(generator.device, self.device):
            raise ValueError(f"sample: generator is on {generator.device} but the replay is on {self.device}; "
                             f"create it with torch.Generator(device=replay.device)")
        src = self._source_ids(batch_size)
        r = torch.randint(0, _RAND_HIGH, (batch_size,), generator=generator, device=self.device)
        local = torch.remainder(r, self._src_size.index_select(0, src))
        t = self._src_table.index_select(0, self._src_offset.index_select(0, src) + local)
        return t, src

    def gather(self, t: Tensor, src: Optional[Tensor] = None) -> Batch:
        """The batch of transitions ``t`` (int64 ids on the device)."""
        B = t.shape[0]
        frames = torch.cat([self.obs_index.index_select(0, t), self.next_index.index_select(0, t)])
        obs: dict[str, Tensor] = {}
        nxt: dict[str, Tensor] = {}
        for k in self.image_keys:
            both = self.frames[k].index_select(0, frames)
            obs[k], nxt[k] = both[:B], both[B:]
        both = self.proprio.index_select(0, frames)
        obs[PROPRIO_KEY], nxt[PROPRIO_KEY] = both[:B], both[B:]
        if src is None:
            src = torch.full((B,), -1, dtype=torch.int64, device=t.device)
        return Batch(obs=obs, next_obs=nxt, action=self.action.index_select(0, t),
                     reward=self.reward.index_select(0, t), done=self.done.index_select(0, t),
                     next_action=self.next_action.index_select(0, t), source=src.clone(),
                     discount=None if self.discount is None else self.discount.index_select(0, t),
                     mc_return=None if self.mc_return is None else self.mc_return.index_select(0, t))

    def select_action_dims(self, keep: Sequence[int]) -> "ResidentReplay":
        """Keep only these action dims in ``action`` and ``next_action`` (in place; returns self): the learner's
        view when the other dims are held fixed (see ``fixed_action_values``)."""
        idx = torch.as_tensor(list(keep), dtype=torch.int64, device=self.action.device)
        self.action = self.action.index_select(1, idx).contiguous()
        self.next_action = self.next_action.index_select(1, idx).contiguous()
        self.action_dim = len(keep)
        return self

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size``: exact per-source counts (:meth:`batch_counts`), uniform within a source."""
        t, src = self.sample_indices(batch_size, generator)
        return self.gather(t, src)
