"""n-step transitions from one-step ones stored demo after demo (used by :func:`~visual_dr3.data.replay.load_replay`)."""

from __future__ import annotations

import numpy as np


def n_step_transitions(reward: np.ndarray, done: np.ndarray, obs_index: np.ndarray, next_index: np.ndarray,
                       valid: np.ndarray, n: int, gamma: float) -> dict[str, np.ndarray]:
    """n-step versions of one-step transitions stored demo after demo (see the module docstring).

    Step t continues into t+1 when they belong to the same demo (``obs_index[t+1] == next_index[t]``), t is
    not terminal and t+1 is sampleable (``valid``). Returns ``reward`` (float32 n-step return), ``last``
    (int64: the step t+k-1 whose s', done and a' the transition takes) and ``discount`` (float32 gamma^k).
    """
    N = len(reward)
    if n < 1:
        raise ValueError(f"n_step_transitions: n must be >= 1, got {n}")
    ret = reward.astype(np.float64)
    last = np.arange(N, dtype=np.int64)
    k = np.ones(N, dtype=np.int64)
    links = np.zeros(N, dtype=bool)  # t -> t+1 continues the same backup chain
    if N > 1:
        links[:-1] = (obs_index[1:] == next_index[:-1]) & (done[:-1] == 0) & valid[1:]
    alive = links.copy()
    for j in range(1, n):
        nxt = np.minimum(last + 1, N - 1)
        ret = np.where(alive, ret + gamma ** j * reward[nxt], ret)
        last = np.where(alive, nxt, last)
        k = np.where(alive, j + 1, k)
        alive = alive & links[nxt]
    return {"reward": ret.astype(np.float32), "last": last, "discount": (gamma ** k).astype(np.float32)}


def return_to_go(reward: np.ndarray, done: np.ndarray, obs_index: np.ndarray, next_index: np.ndarray,
                 gamma: float) -> np.ndarray:
    """Discounted Monte-Carlo return to go of one-step transitions stored demo after demo, float32 ``(N,)``.

    ``G_t = r_t + gamma * G_{t+1}`` while t+1 continues t's demo (``obs_index[t+1] == next_index[t]``) and t is
    not terminal; else ``G_t = r_t`` (a demo's end or a terminal stops the sum: the data's own return, nothing
    bootstrapped). Computed for all demos at once by a doubling scan of that linear recurrence (log2 N
    vectorised steps, float64, products of gamma only: exact to rounding for any length and gamma in [0, 1)).
    """
    N = len(reward)
    g = reward.astype(np.float64)
    c = np.zeros(N, dtype=np.float64)  # after the scan step of span k: prod of the k links' discounts from t
    if N > 1:
        c[:-1] = gamma * ((obs_index[1:] == next_index[:-1]) & (done[:-1] == 0))
    k = 1
    while k < N and c.any():
        # g_t <- g_t + c_t * g_{t+k}; c_t <- c_t * c_{t+k}  (right-hand sides read the old arrays)
        g[:-k] = g[:-k] + c[:-k] * g[k:]
        c[:-k] = c[:-k] * c[k:]
        c[-k:] = 0.0
        k *= 2
    return g.astype(np.float32)
