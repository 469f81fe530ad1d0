"""The policy side of the rollouts: a ``DR3CQL`` module as a batched pool policy (:class:`TorchPolicy`).

The pool calls ``policy(obs_batch, episodes) -> actions`` once per lock step (or each worker calls the copy
that :meth:`TorchPolicy.for_workers` gives, when the policy runs in the workers); :class:`TorchPolicy` moves the
batch to the module's device in the format of training batches and returns numpy actions, with per-episode
noise generators for stochastic actions so that an episode's actions do not depend on the number of
workers. torch is imported lazily (in the constructor): rollout workers import this package and need torch
only when they receive a copy of the policy.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from visual_dr3.evaluation.workers import PROPRIO_KEY


class TorchPolicy:
    """Wraps a module with ``act(obs, deterministic, generator)`` (``DR3CQL``) as a pool policy.

    Images go to the module's device as uint8 ``(B, 3, H, W)`` (a channels-last view of the ``(B, H, W, 3)``
    batch), proprio as float32 ``(B, P)``: the format of training batches. ``deterministic=True`` takes
    ``tanh(mean)`` through ``module.act``. Stochastic actions use one noise generator *per episode*, seeded
    by the episode's seed, so an episode's actions do not depend on which other episodes share its batch
    (i.e. on the number of workers): ``eps`` comes from the episode's generator and goes to
    ``module.act(noise=eps)``. The caller puts the module in eval mode.
    """

    def __init__(self, module, image_keys: Sequence[str], deterministic: bool = True, device=None):
        import torch

        self.torch = torch
        self.module = module
        self.image_keys = list(image_keys)
        self.deterministic = bool(deterministic)
        self.device = torch.device(device) if device is not None else next(module.parameters()).device
        self._generators: dict[int, Any] = {}
        self._per_episode = not self.deterministic and hasattr(module, "acting_nets")
        self._noise_dim = module.acting_nets()[1].action_dim if self._per_episode else None
        self._batch_generator = None

    def for_workers(self) -> "TorchPolicy":
        """The same policy for rollout workers (the pool's ``policy_in_workers``): the module's acting part
        (:class:`~visual_dr3.learner.acting.ActingNets`, no critic) copied to the CPU, sent pickled."""
        from visual_dr3.learner.acting import ActingNets

        return TorchPolicy(ActingNets.of(self.module), self.image_keys, self.deterministic, device="cpu")

    def __getstate__(self) -> dict:
        return {"module": self.module, "image_keys": self.image_keys, "deterministic": self.deterministic,
                "device": str(self.device)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["module"], state["image_keys"], state["deterministic"], state["device"])

    def start_episode(self, episode: int, seed: int) -> None:
        if not self.deterministic:
            self._generators[episode] = self.torch.Generator().manual_seed(int(seed) ^ 0x5EED)

    def end_episode(self, episode: int) -> None:
        self._generators.pop(episode, None)

    def to_tensors(self, obs: dict) -> dict:
        torch = self.torch
        out = {k: torch.from_numpy(obs[k]).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
               for k in self.image_keys}
        out[PROPRIO_KEY] = torch.from_numpy(np.ascontiguousarray(obs[PROPRIO_KEY], dtype=np.float32)).to(self.device)
        return out

    def __call__(self, obs: dict, episodes: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            t = self.to_tensors(obs)
            if self.deterministic:
                a = self.module.act(t, deterministic=True)
            elif self._per_episode:
                eps = torch.stack([torch.randn(self._noise_dim, generator=self._generators[e]) for e in episodes])
                a = self.module.act(t, deterministic=False, noise=eps.to(self.device))
            else:
                if self._batch_generator is None:
                    self._batch_generator = torch.Generator(device=self.device).manual_seed(0)
                a = self.module.act(t, deterministic=False, generator=self._batch_generator)
        return a.float().cpu().numpy()
