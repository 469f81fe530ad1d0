"""Loading the resident replay: :func:`load_replay` reads robomimic-layout HDF5 sources into a ResidentReplay.

A source (:class:`SourceSpec`) is a file, optionally restricted to the demos of a filter key, with a mixing
weight. Loading checks the arguments and the weights, plans every file without reading images
(:func:`~visual_dr3.data.validate.scan_file`; a file named by several sources is read once), lays out the
frames and transitions of every planned demo (with n-step returns when asked), builds the per-source tables
of sampleable transitions, checks the memory a CUDA device has, and finally reads the images with one
contiguous read per demo and camera straight into the resident tensors. The rules (s' and a' at demo
boundaries, which steps are sampleable) are described in :mod:`visual_dr3.data.replay`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from visual_dr3.data.nstep import n_step_transitions, return_to_go
from visual_dr3.data.sampling import PROPRIO_KEY, ResidentReplay, _place, _want_pin
from visual_dr3.data.validate import FilePlan, first_line, open_h5, scan_file
from visual_dr3.errors import UserError

PROGRESS_MIN_DEMOS = 50  # progress=None shows a bar from this many demos on


@dataclass(frozen=True)
class SourceSpec:
    """One source of transitions: a file, optionally only the demos of ``mask/<filter_key>``, a batch share.

    ``weight``: share of each batch (normalized over the sources); ``None`` on every source means in
    proportion to the sources' sizes (sampleable transitions). Mixing ``None`` with numbers is an error.
    """

    path: str
    filter_key: Optional[str] = None
    weight: Optional[float] = 1.0
    #: only these demos (names under ``data/``), e.g. filtered BC's selection; None: every demo of the mask
    demos: Optional[tuple[str, ...]] = None


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
    return SourceSpec(path=os.fspath(spec.path), filter_key=spec.filter_key, weight=spec.weight,
                      demos=getattr(spec, "demos", None))


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

def _check_keys(image_keys: Sequence[str], proprio_keys: Sequence[str]) -> tuple[list[str], list[str]]:
    image_keys, proprio_keys = [str(k) for k in image_keys], [str(k) for k in proprio_keys]
    for keys, what in ((image_keys, "image_keys"), (proprio_keys, "proprio_keys")):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise UserError(f"{what}: {dup} given twice; expected distinct obs keys")
    if PROPRIO_KEY in image_keys:
        raise UserError(f"image_keys: '{PROPRIO_KEY}' is reserved for the proprio vector; expected camera image keys")
    return image_keys, proprio_keys


@dataclass
class _Plan:
    """Pass 1's outcome: the files to read (each with the sources it serves) and the sizes they agree on."""

    plans: list[FilePlan]
    plan_sources: list[list[int]]  # per plan, the indices of the sources naming its file
    action_dim: int
    image_hw: Optional[tuple[int, int]]
    proprio_dims: Optional[tuple[int, ...]]


def _plan_files(specs: list[SourceSpec], image_keys: list[str], proprio_keys: list[str],
                action_dim: Optional[int], expect_hw: Optional[tuple[int, int]]) -> _Plan:
    """Pass 1: check every file and plan what to read (a file named by several sources is read once)."""
    by_file: dict[str, list[int]] = {}
    for i, s in enumerate(specs):
        by_file.setdefault(os.path.realpath(s.path), []).append(i)
    plans: list[FilePlan] = []
    plan_sources: list[list[int]] = []
    image_hw, proprio_dims = None, None
    for real, idxs in by_file.items():
        label = specs[idxs[0]].path
        plan = scan_file(label, [specs[i].filter_key if specs[i].demos is None else specs[i].demos for i in idxs],
                         image_keys, proprio_keys, action_dim,
                         expect_hw, image_hw, proprio_dims)
        action_dim = plan.action_dim if action_dim is None else action_dim
        image_hw, proprio_dims = plan.image_hw or image_hw, plan.proprio_dims
        plans.append(plan)
        plan_sources.append(idxs)
    return _Plan(plans, plan_sources, int(action_dim), image_hw, proprio_dims)


@dataclass
class _Layout:
    """Frames and transitions of every planned demo, in file then demo order, as numpy arrays."""

    frame_base: list[list[int]]  # per plan and demo, its first frame
    trans_base: list[list[int]]  # per plan and demo, its first transition
    obs_index: np.ndarray
    next_index: np.ndarray
    valid: np.ndarray  # sampleable transitions
    actions: np.ndarray
    next_actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    proprio: np.ndarray
    discount: Optional[np.ndarray] = None  # gamma**k per transition (n-step), or None
    mc_return: Optional[np.ndarray] = None  # discounted return to go of each transition's s_t, a_t (or None)


def _layout(p1: _Plan) -> _Layout:
    """Where each demo's frames and transitions go, and every array but the images filled in."""
    frame_base: list[list[int]] = []
    trans_base: list[list[int]] = []
    F = N = 0
    for plan in p1.plans:
        fb, tb = [], []
        for d in plan.demos:
            fb.append(F)
            tb.append(N)
            F += d.num_frames
            N += d.length
        frame_base.append(fb)
        trans_base.append(tb)

    A, P = p1.action_dim, int(sum(p1.proprio_dims or ()))
    lay = _Layout(frame_base, trans_base, obs_index=np.empty(N, dtype=np.int64),
                  next_index=np.empty(N, dtype=np.int64), valid=np.ones(N, dtype=bool),
                  actions=np.empty((N, A), dtype=np.float32), next_actions=np.empty((N, A), dtype=np.float32),
                  rewards=np.empty(N, dtype=np.float32), dones=np.empty(N, dtype=np.float32),
                  proprio=np.empty((F, P), dtype=np.float32))
    for p, plan in enumerate(p1.plans):
        for j, d in enumerate(plan.demos):
            f0, t0, T = frame_base[p][j], trans_base[p][j], d.length
            steps = np.arange(T, dtype=np.int64)
            lay.obs_index[t0:t0 + T] = f0 + steps
            nxt = f0 + steps + 1
            if not d.has_next:
                nxt[T - 1] = f0 + T - 1  # s' = s on a terminal last step ...
                lay.valid[t0 + T - 1] = d.dones[T - 1] == 1.0  # ... and a truncated last step is not sampled
            lay.next_index[t0:t0 + T] = nxt
            lay.actions[t0:t0 + T] = d.actions
            lay.next_actions[t0:t0 + T - 1] = d.actions[1:]
            lay.next_actions[t0 + T - 1] = d.actions[T - 1]
            lay.rewards[t0:t0 + T] = d.rewards
            lay.dones[t0:t0 + T] = d.dones
            lay.proprio[f0:f0 + d.num_frames] = d.proprio
    return lay


def _apply_rewards(lay: _Layout, scale: float, bias: float, discount: Optional[float]) -> None:
    """Rewards read as ``scale * r + bias`` (float64 arithmetic; untouched at 1 and 0), then, with ``discount``,
    each one-step transition's discounted Monte-Carlo return to go (:func:`return_to_go`), in place."""
    if scale != 1.0 or bias != 0.0:
        lay.rewards = (float(scale) * lay.rewards.astype(np.float64) + float(bias)).astype(np.float32)
    if discount is not None:
        lay.mc_return = return_to_go(lay.rewards, lay.dones, lay.obs_index, lay.next_index, float(discount))


def _apply_n_step(lay: _Layout, n_step: int, discount: float) -> None:
    """Turn the one-step transitions of ``lay`` into n-step ones (in place; see :func:`n_step_transitions`)."""
    ns = n_step_transitions(lay.rewards, lay.dones, lay.obs_index, lay.next_index, lay.valid, int(n_step),
                            float(discount))
    lay.rewards, lay.discount = ns["reward"], ns["discount"]
    last = ns["last"]
    lay.next_index, lay.dones, lay.next_actions = lay.next_index[last], lay.dones[last], lay.next_actions[last]


def _source_tables(specs: list[SourceSpec], p1: _Plan, lay: _Layout) -> list[np.ndarray]:
    """Per source, the ids of its sampleable transitions."""
    tables: list[Optional[np.ndarray]] = [None] * len(specs)
    for p, plan in enumerate(p1.plans):
        for k, i in enumerate(p1.plan_sources[p]):
            parts = [np.arange(lay.trans_base[p][j], lay.trans_base[p][j] + plan.demos[j].length, dtype=np.int64)
                     for j in plan.source_demos[k]]
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            tables[i] = ids[lay.valid[ids]]
    return tables


def _check_memory(specs: list[SourceSpec], lay: _Layout, image_hw: Optional[tuple[int, int]], cameras: int,
                  sizes: list[int], device: torch.device) -> None:
    """Memory: check before allocating on a CUDA device."""
    H, W = image_hw if image_hw is not None else (0, 0)
    F, N = lay.proprio.shape[0], lay.obs_index.shape[0]
    frame_bytes = F * 3 * H * W * cameras
    per_transition = 8 + 8 + 4 + 4 + 4 + 4  # obs/next index, reward, done, discount, return to go
    total_bytes = frame_bytes + lay.proprio.nbytes + 2 * lay.actions.nbytes + N * per_transition + 8 * sum(sizes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device if device.index is not None else torch.cuda.current_device())
        if total_bytes > 0.9 * free:
            raise UserError(f"{specs[0].path}: the dataset needs {total_bytes / 2**30:.2f} GiB resident but "
                            f"{device} has {free / 2**30:.2f} GiB free; expected it to fit (load it on 'cpu')")


def load_replay(sources, image_keys: Sequence[str], proprio_keys: Sequence[str], action_dim: Optional[int] = None,
                device: Union[str, torch.device] = "cpu", expect_image_size=None, *, pin_memory: bool = False,
                progress: Optional[bool] = None, n_step: int = 1,
                discount: Optional[float] = None, reward_scale: float = 1.0,
                reward_bias: float = 0.0) -> ResidentReplay:
    """Load ``sources`` (SourceSpecs or paths; a single one is accepted too) into a :class:`ResidentReplay`.

    ``image_keys``: obs keys of uint8 ``(T, H, W, 3)`` images, one tensor each. ``proprio_keys``: obs keys
    concatenated, in this order, into one float32 ``proprio`` vector (may be empty). ``action_dim``: expected
    action size (None: taken from the data, which must agree across demos and files). ``device``: where the
    data lives (a CUDA device when it fits; checked against free memory first). ``expect_image_size``: int or
    (H, W) every camera must have. ``pin_memory``: pin CPU tensors (only when a CUDA device exists).
    ``progress``: tqdm bar on stderr while reading images (None: when there are >= 50 demos).
    ``n_step``, ``discount``: n-step transitions (see :mod:`visual_dr3.data.replay`); with ``discount``
    given, batches carry ``discount`` (gamma^k per sample) and ``mc_return`` (the discounted return to go of
    (s_t, a_t) within its demo, stopping at a terminal), otherwise both None (the learner's gamma applies, one
    step). ``reward_scale``, ``reward_bias``: every reward is read as ``scale * r + bias``, before n-step sums and
    returns to go.
    Every input problem raises a one-line :class:`UserError` naming the file and key.
    """
    if n_step > 1 and discount is None:
        raise ValueError("load_replay: n_step > 1 needs discount")
    if isinstance(sources, (SourceSpec, str, os.PathLike)):
        sources = [sources]
    specs = [_as_spec(s, i) for i, s in enumerate(sources)]
    if not specs:
        raise UserError("sources: none given; expected at least one SourceSpec(path, filter_key, weight)")
    image_keys, proprio_keys = _check_keys(image_keys, proprio_keys)
    if action_dim is not None:
        action_dim = int(action_dim)
    expect_hw = _as_hw(expect_image_size)
    weights = _check_weights(specs)
    device = torch.device(device)
    pin = _want_pin(device, pin_memory)

    p1 = _plan_files(specs, image_keys, proprio_keys, action_dim, expect_hw)
    lay = _layout(p1)
    _apply_rewards(lay, reward_scale, reward_bias, discount)
    if discount is not None:
        _apply_n_step(lay, n_step, discount)
    tables = _source_tables(specs, p1, lay)
    sizes = [int(t.size) for t in tables]
    if weights is None:
        weights = list(sizes)  # pool by size (exact integers for the split)
    for i, (s, n, w) in enumerate(zip(specs, sizes, weights)):
        if w > 0 and n == 0:
            raise UserError(f"{_label(s, i)}: no sampleable transitions (every demo ends in a truncated step "
                            f"without next_obs); expected at least one")
    _check_memory(specs, lay, p1.image_hw, len(image_keys), sizes, device)

    # Pass 2: the images, one contiguous read per demo and camera, straight into the resident tensors.
    H, W = p1.image_hw if p1.image_hw is not None else (0, 0)
    F = lay.proprio.shape[0]
    frames: dict[str, Tensor] = {
        k: torch.empty((F, 3, H, W), dtype=torch.uint8, device=device, pin_memory=pin) for k in image_keys}
    n_demos = sum(len(p.demos) for p in p1.plans)
    show = progress if progress is not None else n_demos >= PROGRESS_MIN_DEMOS
    if image_keys:
        _read_images(p1.plans, lay.frame_base, frames, image_keys, device, show, n_demos)
    return _resident(lay, frames, tables, specs, weights, image_keys, proprio_keys, p1, device, pin)


def _resident(lay: _Layout, frames: dict[str, Tensor], tables: list[np.ndarray], specs: list[SourceSpec],
              weights: list, image_keys: list[str], proprio_keys: list[str], p1: _Plan, device: torch.device,
              pin: bool) -> ResidentReplay:
    """The :class:`ResidentReplay` of the loaded arrays (moved to ``device``)."""
    def put(a: np.ndarray) -> Tensor:
        return _place(torch.from_numpy(a), device, pin)

    plans = p1.plans
    env_args = plans[0].env_args  # plans[0] is the first source's file
    return ResidentReplay(
        frames=frames, proprio=put(lay.proprio), obs_index=put(lay.obs_index), next_index=put(lay.next_index),
        action=put(lay.actions), next_action=put(lay.next_actions), reward=put(lay.rewards), done=put(lay.dones),
        discount=None if lay.discount is None else put(lay.discount),
        mc_return=None if lay.mc_return is None else put(lay.mc_return),
        source_tables=[torch.from_numpy(t) for t in tables],
        sources=specs, weights=weights, image_keys=image_keys, proprio_keys=proprio_keys,
        proprio_dims=tuple(p1.proprio_dims or ()), action_dim=p1.action_dim, image_size=p1.image_hw,
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
