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

Rewards and returns to go (``reward_scale``, ``reward_bias``, ``discount``)
    Every reward is read as ``reward_scale * r + reward_bias`` first. With ``discount`` given, transition t also
    carries ``mc_return``: the discounted return to go sum_j gamma^j r_{t+j} of its demo from step t, up to
    the demo's end or its first terminal (nothing bootstrapped), to compare Q(s_t, a_t) with.

n-step returns (``n_step > 1``, with ``discount``)
    Transition t then carries ``reward = sum_{j<k} gamma^j r_{t+j}``, s' = the s' of step t+k-1 (frame
    t+k), ``done`` and ``next_action`` of step t+k-1, and ``discount = gamma^k`` (:func:`n_step_transitions`).
    k = n, or fewer where the demo ends first (its last step), a terminal is reached (the return stops
    there, ``done = 1``), or the next step is not sampleable (a truncated last step without ``next_obs``).

Sampling (:meth:`ResidentReplay.sample`)
    A batch of B takes an exact, deterministic count per source — the largest-remainder split of B by the
    normalized weights (ties to the earlier source) — each drawn uniformly (with replacement) within its
    source: COG's prior/task pooling; weights 0.5/0.5 give 50/50 batches. ``weight=None`` on every source
    means "in proportion to the sources' sizes" (uniform pooling). The batch is ordered by source (``Batch.source``). Indices are drawn with the caller's ``torch.Generator`` (on the
    replay's device; each DDP rank passes its own) and gathered entirely in torch on the device: no Python
    loop over samples, no numpy and no host sync per call (the first call for a batch size builds a (B,)
    source-id table once).

Where it lives: :mod:`~visual_dr3.data.loading` (:class:`SourceSpec`, :func:`load_replay`: reading the
HDF5 sources) and :mod:`~visual_dr3.data.sampling` (:class:`ResidentReplay`, :class:`Batch`,
:func:`split_counts`: what is held and how batches are drawn). This module re-exports them.
"""

from __future__ import annotations

from visual_dr3.data.loading import PROGRESS_MIN_DEMOS, SourceSpec, load_replay  # noqa: F401
from visual_dr3.data.nstep import n_step_transitions
from visual_dr3.data.sampling import PROPRIO_KEY, Batch, ResidentReplay, split_counts

__all__ = ["SourceSpec", "Batch", "ResidentReplay", "load_replay", "n_step_transitions", "split_counts",
           "PROPRIO_KEY"]
