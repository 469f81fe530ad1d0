"""Representation diagnostics for DR3 / implicit under-parameterization (computed every N steps).

All outputs are detached 0-d tensors (no host sync here; the logger converts them).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["feature_stats", "srank"]


@torch.no_grad()
def feature_stats(phi: Tensor, phi_next: Tensor, eps: float = 1e-8) -> dict[str, Tensor]:
    """Statistics of the features on both sides of a backup, ``phi``/``phi_next`` of shape ``(*lead, D)``.

    Means over all leading dims of::

        dr3_dot       = phi . phi_next
        dr3_cos       = phi . phi_next / max(|phi| |phi_next|, eps)
        phi_norm      = |phi|         (L2)
        phi_next_norm = |phi_next|
    """
    phi, phi_next = phi.detach().float(), phi_next.detach().float()
    dot = (phi * phi_next).sum(-1)
    n, n_next = phi.norm(dim=-1), phi_next.norm(dim=-1)
    cos = dot / (n * n_next).clamp_min(eps)
    return {
        "dr3_dot": dot.mean(),
        "dr3_cos": cos.mean(),
        "phi_norm": n.mean(),
        "phi_next_norm": n_next.mean(),
    }


@torch.no_grad()
def srank(features: Tensor, delta: float = 0.01) -> Tensor:
    """Effective rank (Kumar et al. 2020, "Implicit Under-Parameterization"), an int64 0-d tensor::

        srank_delta(Phi) = min { k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta }

    with ``sigma_1 >= sigma_2 >= ...`` the singular values of ``features`` ``(B, D)``. 0 for an all-zero
    matrix. The SVD runs in float32 (float64 if given); the cumulative sum in float64.
    """
    if features.dim() != 2:
        raise ValueError(f"srank: features must be (B, D), got {tuple(features.shape)}")
    x = features.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    sv = torch.linalg.svdvals(x).double()  # descending
    total = sv.sum()
    frac = torch.cumsum(sv, 0) / total.clamp_min(torch.finfo(torch.float64).tiny)
    k = (frac < 1.0 - delta).sum() + 1
    return torch.where(total > 0, k, torch.zeros_like(k)).clamp_max(sv.numel())
