"""Acting: the two methods that turn observations into env actions, shared by the learner (``DR3CQL``) and
:class:`ActingNets`, the copy of its acting part that a rollout worker holds (no critic, no Lightning).

Both classes give ``acting_nets() -> (encoder, actor)`` and the buffers ``action_fill`` / ``learned_index``;
:func:`act` and :func:`full_action` are their methods, so a worker's copy acts exactly as the learner does.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def act(self, obs: dict[str, torch.Tensor], deterministic: bool = True,
        generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Actions in [-1, 1] for a batch of observations (uint8 images (B,3,H,W), 'proprio' (B,P)):
    ``tanh(mean)``, or with ``deterministic=False`` ``tanh(mean + std * eps)``, ``eps`` drawn with
    ``generator`` or given as ``noise`` ((B, learned action dims), standard normal)."""
    enc, actor = self.acting_nets()
    phi = enc(obs)
    a = actor.mode(phi) if deterministic else actor.sample(phi, generator=generator, eps=noise)[0]
    return self.full_action(a)


def full_action(self, a: torch.Tensor) -> torch.Tensor:
    """The env's action from the networks' (learned dims only): fixed dims take their dataset value."""
    if a.shape[-1] == self.action_fill.shape[0]:
        return a
    full = self.action_fill.to(a.dtype).expand(*a.shape[:-1], -1).clone()
    full[..., self.learned_index] = a
    return full


class ActingNets(nn.Module):
    """A CPU copy of what acts in a learner: its acting encoder and actor (the moving averages when it acts
    with them) and its fixed action dims, in eval mode. Picklable without Lightning: what a rollout worker
    receives when the policy runs in the workers."""

    def __init__(self, encoder: nn.Module, actor: nn.Module, action_fill: torch.Tensor, learned_index: torch.Tensor):
        super().__init__()
        self.encoder, self.actor = encoder, actor
        self.register_buffer("action_fill", action_fill.detach().clone())
        self.register_buffer("learned_index", learned_index.detach().clone())
        self.eval().requires_grad_(False)

    @classmethod
    def of(cls, module) -> "ActingNets":
        """The acting part of ``module`` (a ``DR3CQL``, or anything with ``acting_nets``, ``action_fill`` and
        ``learned_index``), copied to the CPU."""
        enc, actor = module.acting_nets()
        return cls(copy.deepcopy(enc).cpu(), copy.deepcopy(actor).cpu(), module.action_fill.cpu(),
                   module.learned_index.cpu())

    def acting_nets(self) -> tuple[nn.Module, nn.Module]:
        return self.encoder, self.actor

    act = act
    full_action = full_action
