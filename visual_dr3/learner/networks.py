"""The heads on the encoder features: twin Q heads, the tanh-Gaussian actor, and small utilities.

The encoders themselves (phi) live in :mod:`visual_dr3.learner.encoders`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visual_dr3.learner.encoders import weight_init

__all__ = ["QHeads", "TanhGaussianActor", "count_parameters", "polyak_update"]

LOG2 = math.log(2.0)


def _mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    return nn.Sequential(*layers)


def _first_layer_broadcast(layer: nn.Linear, phi: Tensor, action: Tensor) -> Tensor:
    """``layer(cat([phi, action], -1))`` without materialising the concat or repeating phi.

    ``phi (*lead, D)`` with ``action (*lead, A)``, or ``action (*lead, N, A)`` (phi shared by N actions).
    """
    d = phi.shape[-1]
    h_phi = F.linear(phi, layer.weight[:, :d])
    h_act = F.linear(action, layer.weight[:, d:], layer.bias)
    if action.dim() == phi.dim() + 1:
        h_phi = h_phi.unsqueeze(-2)
    elif action.shape[:-1] != phi.shape[:-1]:
        raise ValueError(f"QHeads: phi {tuple(phi.shape)} and action {tuple(action.shape)} do not match")
    return h_phi + h_act


class QHeads(nn.Module):
    """Twin Q MLPs on ``cat([phi, action])`` (ReLU hidden layers, scalar output).

    ``forward(phi, action)``: ``phi (B, D)``, ``action (B, A)`` -> ``(q1, q2)`` each ``(B,)``; or
    ``action (B, N, A)`` -> each ``(B, N)`` (phi is not repeated: its part of the first layer is computed
    once per state and broadcast). With ``return_penultimate=True`` also returns the last hidden
    activations (after ReLU) of both heads stacked: ``(2, B, H)`` / ``(2, B, N, H)``, for DR3 on the
    penultimate layer.
    """

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        if not hidden:
            raise ValueError("QHeads: need at least one hidden layer")
        self.feature_dim, self.action_dim, self.hidden = feature_dim, action_dim, tuple(hidden)
        self.heads = nn.ModuleList()
        for _ in range(2):
            body = _mlp(feature_dim + action_dim, hidden)
            self.heads.append(nn.ModuleDict({"body": body, "out": nn.Linear(hidden[-1], 1)}))
        self.apply(weight_init)

    def _head(self, head: nn.ModuleDict, phi: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        body = head["body"]
        x = F.relu(_first_layer_broadcast(body[0], phi, action))
        for layer in list(body)[2:]:
            x = layer(x)
        return head["out"](x).squeeze(-1), x

    def forward(self, phi: Tensor, action: Tensor, return_penultimate: bool = False):
        q1, h1 = self._head(self.heads[0], phi, action)
        q2, h2 = self._head(self.heads[1], phi, action)
        if return_penultimate:
            return q1, q2, torch.stack([h1, h2])
        return q1, q2


class TanhGaussianActor(nn.Module):
    """SAC policy on ``phi``: ``a = tanh(u)``, ``u ~ N(mean(phi), exp(log_std(phi)))``.

    ``log_std`` is clamped to ``[log_std_min, log_std_max]``. Log-probabilities include the tanh change of
    variables, ``log pi(a) = log N(u) - sum_i log(1 - tanh(u_i)^2)`` with the stable form
    ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.body = _mlp(feature_dim, hidden)
        self.out = nn.Linear(hidden[-1] if hidden else feature_dim, 2 * action_dim)
        self.apply(weight_init)

    def forward(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of the pre-tanh Gaussian, each ``(*lead, A)``; log_std clamped."""
        mean, log_std = self.out(self.body(phi)).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    @staticmethod
    def _log_prob_pre_tanh(u: Tensor, eps: Tensor, log_std: Tensor) -> Tensor:
        # log N(u; mean, std) with eps = (u - mean) / std, minus the tanh log-det; summed over A.
        normal = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_det = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
        return (normal - log_det).sum(-1)

    def sample(
        self, phi: Tensor, generator: torch.Generator | None = None, num_samples: int | None = None,
        eps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised sample: ``(action in (-1, 1), log_prob)``.

        ``num_samples=None``: action ``(B, A)``, log_prob ``(B,)``. ``num_samples=N``: ``(B, N, A)`` and
        ``(B, N)`` (the network runs once per state). ``generator`` must be on phi's device. ``eps``: the
        standard normal noise to use instead of drawing it (the shape of the action).
        """
        mean, log_std = self(phi)
        if num_samples is not None:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
            shape = (*phi.shape[:-1], num_samples, self.action_dim)
        else:
            shape = mean.shape
        if eps is None:
            eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), self._log_prob_pre_tanh(u, eps, log_std)

    def log_prob(self, phi: Tensor, action: Tensor) -> Tensor:
        """log pi(action | phi) for given actions (e.g. dataset actions for BC): ``(*lead,)``.

        ``action`` ``(*lead, A)`` or ``(*lead, N, A)``; clipped to ``±(1 - 1e-6)`` before ``atanh``.
        """
        mean, log_std = self(phi)
        if action.dim() == phi.dim() + 1:
            mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
        lim = 1.0 - 1e-6
        u = torch.atanh(action.clamp(-lim, lim))
        eps = (u - mean) * torch.exp(-log_std)
        return self._log_prob_pre_tanh(u, eps, log_std)

    def mode(self, phi: Tensor) -> Tensor:
        """Deterministic action ``tanh(mean)`` (for evaluation)."""
        return torch.tanh(self(phi)[0])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def polyak_update(target_params: Iterable[Tensor], online_params: Iterable[Tensor], tau: float) -> None:
    """In place ``target <- (1 - tau) * target + tau * online`` for all tensors at once (``_foreach_lerp_``).

    Pass ``target.parameters()`` and ``online.parameters()`` (same order). Buffers are not touched.
    """
    target_params, online_params = list(target_params), list(online_params)
    if len(target_params) != len(online_params):
        raise ValueError(f"polyak_update: {len(target_params)} target vs {len(online_params)} online tensors")
    if target_params:
        torch._foreach_lerp_(target_params, online_params, tau)
