"""Resident replay: a whole robomimic-layout dataset held once in memory (uint8), sampled by index in torch.

Loading (:func:`load_replay`)
    Reads any HDF5 file in robomimic's layout — ours (``data.attrs['visual_dr3']``) and robomimic's own image
    datasets, with or without ``next_obs`` — from one or several *sources*: a file, optionally restricted to
    the demos of a filter key (``mask/<key>``), with a mixing weight. A file named by several sources (e.g.
    COG's ``prior`` and ``task`` masks of one file) is read once. Each file is first checked without reading
    images (:mod:`visual_dr3.data.validate`; every problem is a one-line :class:`UserError` naming the file
    and key), then every dataset of every demo is read with one contiguous read (``ds[()]``; fancy indexing
    of chunked/compressed HDF5 is 20-1000x slower).

What is held (on ``device``; CPU memory is pinned only when asked and a CUDA device exists)
    - frames: per camera one contiguous uint8 tensor ``(F, 3, H, W)`` (transposed from HWC once, at load),
      and one float32 ``(F, P)`` tensor of the proprio keys concatenated in the order given. Per demo of T
      steps the frames are its T observations, plus ONE extra frame — the last step's ``next_obs`` — when
      the file has ``next_obs`` (so s' of the last step is exact). s' is never stored a second time.
    - transitions: ``obs_index`` / ``next_index`` (int64 frame indices), ``action``, ``next_action``,
      ``reward``, ``done`` (float32).

s' and a' at demo boundaries
    - s'_t = frame t+1 of the same demo. This relies on ``next_obs[t] == obs[t+1]``, which holds for
      robomimic's files and ours; ``next_obs`` is otherwise read only at the last step.
    - Last step, file WITH ``next_obs``: s' = ``next_obs[T-1]`` (exact).
    - Last step, file WITHOUT ``next_obs`` (e.g. robomimic's ``--exclude-next-obs``):
      ``done = 1`` -> s' = s (its bootstrap is masked by ``done`` anyway);
      ``done = 0`` (time-limit truncation, s' unknown) -> the step is EXCLUDED from sampling.
    - ``next_action`` = the dataset's a_{t+1} of the same demo; at the last step (no a_{t+1}) it is a_t.
      That only matters for SARSA backups of truncated last steps, which are sampled only when the file
      has ``next_obs``.
    - ``done`` is the file's ``dones`` (1 = terminal, no bootstrap), also on steps inside a demo.

n-step returns (``n_step > 1``, with ``discount``)
    Transition t then carries ``reward = sum_{j<k} gamma^j r_{t+j}``, s' = the s' of step t+k-1 (frame
    t+k), ``done`` and ``next_action`` of step t+k-1, and ``discount = gamma^k`` (:func:`n_step_transitions`).
    k = n, or fewer where the demo ends first (its last step), a terminal is reached (the return stops
    there, ``done = 1``), or the next step is not sampleable (a truncated last step without ``next_obs``).

Sampling (:meth:`ResidentReplay.sample`)
    A batch of B takes an exact, deterministic count per source — the largest-remainder split of B by the
    normalized weights (ties to the earlier source) — each drawn uniformly (with replacement) within its
    source: COG's prior/task pooling; weights 0.5/0.5 give 50/50 batches. ``weight=None`` on every source
    means "in proportion to the sources' sizes" (uniform pooling; see :func:`weights_by_size`). The batch is
    ordered by source (``Batch.source``). Indices are drawn with the caller's ``torch.Generator`` (on the
    replay's device; each DDP rank passes its own) and gathered entirely in torch on the device: no Python
    loop over samples, no numpy and no host sync per call (the first call for a batch size builds a (B,)
    source-id table once).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from visual_dr3.data.nstep import n_step_transitions
from visual_dr3.data.validate import FilePlan, first_line, open_h5, scan_file
from visual_dr3.errors import UserError

PROPRIO_KEY = "proprio"
PROGRESS_MIN_DEMOS = 50  # progress=None shows a bar from this many demos on
_RAND_HIGH = 2 ** 62  # uniform int64 draws reduced modulo the source size (bias <= size / 2**62)

__all__ = ["SourceSpec", "Batch", "ResidentReplay", "load_replay", "n_step_transitions", "split_counts",
           "weights_by_size", "PROPRIO_KEY"]


@dataclass(frozen=True)
class SourceSpec:
    """One source of transitions: a file, optionally only the demos of ``mask/<filter_key>``, a batch share.

    ``weight``: share of each batch (normalized over the sources); ``None`` on every source means in
    proportion to the sources' sizes (sampleable transitions). Mixing ``None`` with numbers is an error.
    """

    path: str
    filter_key: Optional[str] = None
    weight: Optional[float] = 1.0


@dataclass
class Batch:
    """A sampled batch; all tensors on the replay's device."""

    obs: dict[str, Tensor]  # image keys -> uint8 (B,3,H,W); "proprio" -> float32 (B,P)
    next_obs: dict[str, Tensor]  # same keys, s' = frame t+1 of the same demo (see module docstring)
    action: Tensor  # float32 (B,A)
    reward: Tensor  # float32 (B,)
    done: Tensor  # float32 (B,)  1 = terminal (no bootstrap)
    next_action: Tensor  # float32 (B,A) dataset a_{t+1} (a_t at a demo's last step)
    source: Tensor  # int64 (B,) index of the SourceSpec the sample came from
    discount: Optional[Tensor] = None  # float32 (B,) gamma**k of an n-step backup over k steps (None: the config's)


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


def weights_by_size(sizes: Sequence[int]) -> list[float]:
    """Weights that pool sources uniformly (each transition equally likely): proportional to their sizes."""
    total = sum(sizes)
    return [s / total for s in sizes] if total > 0 else [0.0 for _ in sizes]


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
    """The loaded dataset (see the module docstring). Build it with :func:`load_replay`.

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
                 discount: Optional[Tensor] = None):
        self.frames = frames
        self.discount = discount
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
                *([] if self.discount is None else [self.discount])]

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
        if self.discount is not None:
            self.discount = _place(self.discount, device, pin)
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
                     discount=None if self.discount is None else self.discount.index_select(0, t))

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


# ---------------------------------------------------------------------- loading
def _as_spec(s, i: int) -> SourceSpec:
    if isinstance(s, SourceSpec):
        spec = s
    elif isinstance(s, (str, os.PathLike)):
        spec = SourceSpec(path=os.fspath(s))
    elif all(hasattr(s, a) for a in ("path", "filter_key", "weight")):
        spec = SourceSpec(path=s.path, filter_key=s.filter_key, weight=s.weight)
    else:
        raise UserError(f"sources[{i}]: {s!r} is not a SourceSpec or path; expected SourceSpec(path, filter_key, weight)")
    if not spec.path:
        raise UserError(f"sources[{i}]: empty path; expected an HDF5 file")
    return SourceSpec(path=os.fspath(spec.path), filter_key=spec.filter_key, weight=spec.weight)


def _label(spec: SourceSpec, i: int) -> str:
    return f"{spec.path}" + (f" mask/{spec.filter_key}" if spec.filter_key else "") + f" (sources[{i}])"


def _check_weights(specs: list[SourceSpec]) -> Optional[list[float]]:
    """Numeric weights (checked), or None when every weight is None (by size)."""
    nones = [s.weight is None for s in specs]
    if all(nones):
        return None
    if any(nones):
        i = nones.index(True)
        raise UserError(f"{_label(specs[i], i)}: weight is None while other sources have numbers; expected "
                        f"numbers on every source, or None on every source (pool by size)")
    ws = []
    for i, s in enumerate(specs):
        try:
            w = float(s.weight)
        except (TypeError, ValueError):
            raise UserError(f"{_label(s, i)}: weight {s.weight!r} is not a number; expected a weight >= 0") from None
        if not np.isfinite(w) or w < 0:
            raise UserError(f"{_label(s, i)}: weight {w} is negative or not finite; expected a weight >= 0")
        ws.append(w)
    if sum(ws) <= 0:
        names = ", ".join(_label(s, i) for i, s in enumerate(specs))
        raise UserError(f"sources {names}: all weights are 0; expected at least one positive weight")
    return ws


def _as_hw(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def load_replay(sources, image_keys: Sequence[str], proprio_keys: Sequence[str], action_dim: Optional[int] = None,
                device: Union[str, torch.device] = "cpu", expect_image_size=None, *, pin_memory: bool = False,
                progress: Optional[bool] = None, n_step: int = 1,
                discount: Optional[float] = None) -> ResidentReplay:
    """Load ``sources`` (SourceSpecs or paths; a single one is accepted too) into a :class:`ResidentReplay`.

    ``image_keys``: obs keys of uint8 ``(T, H, W, 3)`` images, one tensor each. ``proprio_keys``: obs keys
    concatenated, in this order, into one float32 ``proprio`` vector (may be empty). ``action_dim``: expected
    action size (None: taken from the data, which must agree across demos and files). ``device``: where the
    data lives (a CUDA device when it fits; checked against free memory first). ``expect_image_size``: int or
    (H, W) every camera must have. ``pin_memory``: pin CPU tensors (only when a CUDA device exists).
    ``progress``: tqdm bar on stderr while reading images (None: when there are >= 50 demos).
    ``n_step``, ``discount``: n-step transitions (see the module docstring); with ``discount`` given, batches
    carry ``discount`` (gamma^k per sample), otherwise None (the learner's gamma applies, one step).
    Every input problem raises a one-line :class:`UserError` naming the file and key.
    """
    if n_step > 1 and discount is None:
        raise ValueError("load_replay: n_step > 1 needs discount")
    if isinstance(sources, (SourceSpec, str, os.PathLike)):
        sources = [sources]
    specs = [_as_spec(s, i) for i, s in enumerate(sources)]
    if not specs:
        raise UserError("sources: none given; expected at least one SourceSpec(path, filter_key, weight)")
    image_keys, proprio_keys = [str(k) for k in image_keys], [str(k) for k in proprio_keys]
    for keys, what in ((image_keys, "image_keys"), (proprio_keys, "proprio_keys")):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise UserError(f"{what}: {dup} given twice; expected distinct obs keys")
    if PROPRIO_KEY in image_keys:
        raise UserError(f"image_keys: '{PROPRIO_KEY}' is reserved for the proprio vector; expected camera image keys")
    if action_dim is not None:
        action_dim = int(action_dim)
    expect_hw = _as_hw(expect_image_size)
    weights = _check_weights(specs)
    device = torch.device(device)
    pin = _want_pin(device, pin_memory)

    # Pass 1: check every file and plan what to read (a file named by several sources is read once).
    by_file: dict[str, list[int]] = {}
    for i, s in enumerate(specs):
        by_file.setdefault(os.path.realpath(s.path), []).append(i)
    plans: list[FilePlan] = []
    plan_sources: list[list[int]] = []
    image_hw, proprio_dims = None, None
    for real, idxs in by_file.items():
        label = specs[idxs[0]].path
        plan = scan_file(label, [specs[i].filter_key for i in idxs], image_keys, proprio_keys, action_dim,
                         expect_hw, image_hw, proprio_dims)
        action_dim = plan.action_dim if action_dim is None else action_dim
        image_hw, proprio_dims = plan.image_hw or image_hw, plan.proprio_dims
        plans.append(plan)
        plan_sources.append(idxs)

    # Layout: frames and transitions of every planned demo, in file then demo order.
    frame_base: list[list[int]] = []
    trans_base: list[list[int]] = []
    F = N = 0
    for plan in plans:
        fb, tb = [], []
        for d in plan.demos:
            fb.append(F)
            tb.append(N)
            F += d.num_frames
            N += d.length
        frame_base.append(fb)
        trans_base.append(tb)

    obs_index = np.empty(N, dtype=np.int64)
    next_index = np.empty(N, dtype=np.int64)
    valid = np.ones(N, dtype=bool)
    A = int(action_dim)
    actions = np.empty((N, A), dtype=np.float32)
    next_actions = np.empty((N, A), dtype=np.float32)
    rewards = np.empty(N, dtype=np.float32)
    dones = np.empty(N, dtype=np.float32)
    P = int(sum(proprio_dims or ()))
    proprio = np.empty((F, P), dtype=np.float32)
    for p, plan in enumerate(plans):
        for j, d in enumerate(plan.demos):
            f0, t0, T = frame_base[p][j], trans_base[p][j], d.length
            steps = np.arange(T, dtype=np.int64)
            obs_index[t0:t0 + T] = f0 + steps
            nxt = f0 + steps + 1
            if not d.has_next:
                nxt[T - 1] = f0 + T - 1  # s' = s on a terminal last step ...
                valid[t0 + T - 1] = d.dones[T - 1] == 1.0  # ... and a truncated last step is not sampled
            next_index[t0:t0 + T] = nxt
            actions[t0:t0 + T] = d.actions
            next_actions[t0:t0 + T - 1] = d.actions[1:]
            next_actions[t0 + T - 1] = d.actions[T - 1]
            rewards[t0:t0 + T] = d.rewards
            dones[t0:t0 + T] = d.dones
            proprio[f0:f0 + d.num_frames] = d.proprio

    disc = None
    if discount is not None:
        ns = n_step_transitions(rewards, dones, obs_index, next_index, valid, int(n_step), float(discount))
        rewards, disc = ns["reward"], ns["discount"]
        next_index, dones, next_actions = next_index[ns["last"]], dones[ns["last"]], next_actions[ns["last"]]

    # Per-source tables of sampleable transition ids.
    tables: list[Optional[np.ndarray]] = [None] * len(specs)
    for p, plan in enumerate(plans):
        for k, i in enumerate(plan_sources[p]):
            parts = [np.arange(trans_base[p][j], trans_base[p][j] + plan.demos[j].length, dtype=np.int64)
                     for j in plan.source_demos[k]]
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            tables[i] = ids[valid[ids]]
    sizes = [int(t.size) for t in tables]
    if weights is None:
        weights = list(sizes)  # pool by size (exact integers for the split; see weights_by_size)
    for i, (s, n, w) in enumerate(zip(specs, sizes, weights)):
        if w > 0 and n == 0:
            raise UserError(f"{_label(s, i)}: no sampleable transitions (every demo ends in a truncated step "
                            f"without next_obs); expected at least one")

    # Memory: check before allocating on a CUDA device.
    H, W = image_hw if image_hw is not None else (0, 0)
    frame_bytes = F * 3 * H * W * len(image_keys)
    total_bytes = frame_bytes + proprio.nbytes + 2 * actions.nbytes + N * (8 + 8 + 4 + 4) + 8 * sum(sizes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device if device.index is not None else torch.cuda.current_device())
        if total_bytes > 0.9 * free:
            raise UserError(f"{specs[0].path}: the dataset needs {total_bytes / 2**30:.2f} GiB resident but "
                            f"{device} has {free / 2**30:.2f} GiB free; expected it to fit (load it on 'cpu')")

    # Pass 2: the images, one contiguous read per demo and camera, straight into the resident tensors.
    frames: dict[str, Tensor] = {
        k: torch.empty((F, 3, H, W), dtype=torch.uint8, device=device, pin_memory=pin) for k in image_keys}
    n_demos = sum(len(p.demos) for p in plans)
    show = progress if progress is not None else n_demos >= PROGRESS_MIN_DEMOS
    if image_keys:
        _read_images(plans, frame_base, frames, image_keys, device, show, n_demos)

    env_args = plans[0].env_args  # plans[0] is the first source's file
    return ResidentReplay(
        frames=frames,
        proprio=_place(torch.from_numpy(proprio), device, pin),
        obs_index=_place(torch.from_numpy(obs_index), device, pin),
        next_index=_place(torch.from_numpy(next_index), device, pin),
        action=_place(torch.from_numpy(actions), device, pin),
        next_action=_place(torch.from_numpy(next_actions), device, pin),
        reward=_place(torch.from_numpy(rewards), device, pin),
        done=_place(torch.from_numpy(dones), device, pin),
        discount=None if disc is None else _place(torch.from_numpy(disc), device, pin),
        source_tables=[torch.from_numpy(t) for t in tables],
        sources=specs, weights=weights, image_keys=image_keys, proprio_keys=proprio_keys,
        proprio_dims=tuple(proprio_dims or ()), action_dim=A, image_size=image_hw,
        env_args=env_args, meta=plans[0].meta, metas=[p.meta for p in plans], files=[p.path for p in plans],
        device=device, pinned=pin)


def _read_images(plans: list[FilePlan], frame_base: list[list[int]], frames: dict[str, Tensor],
                 image_keys: list[str], device: torch.device, show: bool, n_demos: int) -> None:
    from tqdm.auto import tqdm

    on_cpu = device.type == "cpu"
    with tqdm(total=n_demos, desc="loading replay", unit="demo", disable=not show, file=sys.stderr,
              dynamic_ncols=True, leave=False) as bar:
        for p, plan in enumerate(plans):
            bar.set_postfix_str(os.path.basename(plan.path), refresh=False)
            with open_h5(plan.path) as f:
                data = f["data"]
                for j, d in enumerate(plan.demos):
                    f0, T = frame_base[p][j], d.length
                    g = data[d.name]
                    for k in image_keys:
                        chunks = [_read(plan.path, g, f"obs/{k}", None)]
                        if d.has_next:
                            chunks.append(_read(plan.path, g, f"next_obs/{k}", T - 1))
                        dst = frames[k]
                        pos = f0
                        for arr in chunks:
                            n = arr.shape[0]
                            if on_cpu:
                                # numpy's strided copy does this HWC -> CHW transpose of uint8 ~4x faster
                                # than torch's copy_ from a permuted view (0.35 s vs 1.4 s per camera of 20k
                                # 84x84 frames, measured on a 2-core machine).
                                np.copyto(dst[pos:pos + n].numpy(), arr.transpose(0, 3, 1, 2))
                            else:  # upload as stored, transpose on the device
                                dst[pos:pos + n].copy_(torch.from_numpy(arr).to(device).permute(0, 3, 1, 2))
                            pos += n
                    bar.update(1)


def _read(path: str, g, key: str, last: Optional[int]) -> np.ndarray:
    """``g[key][()]`` (or the single frame ``g[key][last:last+1]``) with read errors naming the dataset."""
    where = f"{g.name.lstrip('/')}/{key}"
    try:
        ds = g[key]
        arr = ds[()] if last is None else ds[last:last + 1]
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path}: reading {where} failed, the file is truncated or corrupt ({first_line(e)}); "
                        f"expected readable uint8 images") from None
    return np.ascontiguousarray(arr)
