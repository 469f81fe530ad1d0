"""The LightningModule: owns the networks and optimizers, runs :func:`compute_update`, logs diagnostics.

Manual optimization with one backward per step (see update.py), then every optimizer steps and the target
Q heads move by Polyak averaging. Diagnostics (srank, feature dot/cosine/norms, gradient norms, samples/s)
are computed only every ``log_every`` steps: in between, nothing leaves the device.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional

import lightning as L
import torch
from torch import nn

from visual_dr3.data.replay import Batch
from visual_dr3.learner import acting
from visual_dr3.learner import diagnostics as D
from visual_dr3.learner.config import TrainConfig, from_dict, to_dict
from visual_dr3.learner.encoders import make_encoder
from visual_dr3.learner.networks import QHeads, TanhGaussianActor, polyak_update
from visual_dr3.learner.update import Nets, compute_update, ema_decay


def _ensure_fused(opt: torch.optim.Optimizer) -> None:
    """Fused Adam in every group: a checkpoint of an older version restores its groups' ``fused=None`` (the
    foreach path, which refuses ``found_inf``); its step counters then move to the parameters' device."""
    for group in opt.param_groups:
        if group.get("fused"):
            continue
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            st = opt.state.get(p)
            if st and torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


class TrainingDiverged(Exception):
    """Non-finite loss, Q-values or gradients; raised at the next log step or save (no checkpoint written). From
    the non-finite step on, no optimizer step is applied (see ``DR3CQL.optimizer_step``)."""


GUARDED = ("loss", "Q-values", "gradients")


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of the gradients present (a 0-d tensor; no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


DERIVED_BUFFERS = ("proprio_mean", "proprio_std", "action_fill")


def _drop_derived_buffers(state_dict, prefix, *args) -> None:
    """Load hook: buffers rebuilt from the hyperparameters are not loaded (checkpoints that hold them still load)."""
    for k in [k for k in state_dict if k.startswith(prefix) and k.rsplit(".", 1)[-1] in DERIVED_BUFFERS]:
        state_dict.pop(k)


class DR3CQL(L.LightningModule):
    """Twin-Q CQL critic + SAC actor on an image encoder, with the DR3 regularizer."""

    def __init__(self, config: dict, image_keys: list[str], proprio_keys: list[str], proprio_dim: int,
                 image_size: int, action_dim: int, env_args: Optional[dict] = None,
                 dataset_meta: Optional[dict] = None, dataset_stats: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg: TrainConfig = from_dict(config)
        self.automatic_optimization = False
        m = self.cfg.model
        # Action dims held at a fixed value (the dataset's, e.g. the scripted data's zero rotation): the networks
        # see only the learned dims; act() fills the others in. learned_dims indexes the env's action vector.
        fixed = (dataset_stats or {}).get("fixed_actions") or [None] * action_dim
        if self.cfg.data.fixed_action_dims == "none" or all(v is not None for v in fixed):
            fixed = [None] * action_dim
        self.learned_dims = [i for i, v in enumerate(fixed) if v is None]
        self.register_buffer("action_fill", torch.tensor([0.0 if v is None else v for v in fixed]), persistent=False)
        self.register_buffer("learned_index", torch.tensor(self.learned_dims, dtype=torch.long), persistent=False)
        net_action_dim = len(self.learned_dims)
        enc_kw = dict(image_keys=list(image_keys), image_size=image_size, proprio_dim=proprio_dim,
                      feature_dim=m.feature_dim, proprio_features=m.proprio_features)
        if m.encoder == "drq":
            enc_kw.update(channels=m.channels, num_layers=m.num_layers, pool=m.pool)
        self.encoder = make_encoder(m.encoder, **enc_kw)
        is_bc = self.cfg.algorithm == "bc"  # BC: the actor reads (and trains) `encoder`; no critic
        self.actor_encoder = make_encoder(m.encoder, **enc_kw) if m.actor_encoder != "shared" and not is_bc else None
        stats = dataset_stats or {}
        if self.cfg.data.normalize_proprio and stats.get("proprio_mean") and proprio_dim:
            for enc in (self.encoder, self.actor_encoder):
                if enc is not None:
                    enc.set_proprio_stats(stats["proprio_mean"], stats["proprio_std"])
        self._register_load_state_dict_pre_hook(_drop_derived_buffers)
        self.q = None if is_bc else QHeads(m.feature_dim, net_action_dim, hidden=tuple(m.hidden_dims))
        self.q_target = None if is_bc else copy.deepcopy(self.q).requires_grad_(False)
        # algo.target_encoder: the full target network, a Polyak copy of the critic encoder (proprio stats included)
        self.encoder_target = (copy.deepcopy(self.encoder).requires_grad_(False)
                               if self.cfg.algo.target_encoder and not is_bc else None)
        self.actor = TanhGaussianActor(m.feature_dim, net_action_dim, hidden=tuple(m.hidden_dims))
        # algo.policy_ema > 0: a moving average of the acting weights (the encoder the actor reads, and the
        # actor), updated after each step, not trained; act() uses it unless act_with_ema is set False.
        self.ema_encoder = self.ema_actor = None
        if self.cfg.algo.policy_ema > 0:
            self.ema_encoder = copy.deepcopy(self.trained_acting_nets()[0]).requires_grad_(False)
            self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.act_with_ema = self.ema_actor is not None
        # kl.coef > 0: pi_k, the lagged policy the KL regularizer pulls toward (a Polyak copy of the actor's head)
        self.kl_actor = (copy.deepcopy(self.actor).requires_grad_(False)
                         if self.cfg.kl.coef > 0 and not is_bc else None)
        # A fixed alpha takes no gradient (DDP insists every trainable parameter gets one each step).
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.cfg.algo.init_alpha)),
                                      requires_grad=self.cfg.algo.auto_alpha and not is_bc)
        self.log_alpha_prime = (nn.Parameter(torch.tensor(math.log(self.cfg.cql.init_alpha_prime)))
                                if self.cfg.cql.lagrange else None)
        self.update_generator: Optional[torch.Generator] = None
        self._pending_generator_state: Optional[torch.Tensor] = None
        self._last_log_time: Optional[float] = None
        self._last_log_step = 0
        # Divergence guard: per quantity of GUARDED, the first step it was non-finite (-1: never), kept on the
        # device and read only at log steps and before checkpoint saves.
        self._first_bad: Optional[torch.Tensor] = None

    # -- wiring ---------------------------------------------------------------------------------------
    def nets(self) -> Nets:
        return Nets(self.encoder, self.q, self.q_target, self.actor, self.actor_encoder,
                    self.log_alpha, self.log_alpha_prime, self.kl_actor, self.encoder_target)

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.q is None:  # BC: no critic
            return []
        return list(self.encoder.parameters()) + list(self.q.parameters())

    def actor_parameters(self) -> list[nn.Parameter]:
        enc = self.encoder if self.q is None else self.actor_encoder
        return ([] if enc is None else list(enc.parameters())) + list(self.actor.parameters())

    def configure_optimizers(self):
        # One Adam with a parameter group per learner (critic, actor, alpha, Lagrange multiplier). Adam is
        # per-parameter, so this equals separate optimizers, while Lightning counts one optimizer step per
        # training step (it counts every optimizer's step in global_step / max_steps).
        a = self.cfg.algo
        groups = [{"params": self.critic_parameters(), "lr": a.critic_lr, "name": "critic"},
                  {"params": self.actor_parameters(), "lr": a.actor_lr, "name": "actor"}]
        if self.q is not None:  # BC has no critic and no temperature: its optimizer holds the actor alone
            groups.append({"params": [self.log_alpha], "lr": a.alpha_lr, "name": "alpha"})
        if self.log_alpha_prime is not None:
            lr = a.critic_lr if self.cfg.cql.lagrange_lr is None else self.cfg.cql.lagrange_lr
            groups.append({"params": [self.log_alpha_prime], "lr": lr, "name": "alpha_prime"})
        # fused: one kernel per device, and it honours ``found_inf`` (see optimizer_step)
        return torch.optim.Adam([g for g in groups if g["params"]], fused=True)

    def make_update_generator(self) -> torch.Generator:
        """Generator of the update's own noise (uniform and policy actions), seeded per rank, on the device."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.cfg.seed * 7919 + 1000 * rank + 17)
        if self._pending_generator_state is not None:
            gen.set_state(self._pending_generator_state)
            self._pending_generator_state = None
        return gen

    def on_fit_start(self) -> None:
        # After the model is on its device and after a checkpoint (if any) was restored.
        self.update_generator = self.make_update_generator()

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int):
        step = self.global_step
        opt = self.optimizers()
        if self.update_generator is None:
            self.update_generator = self.make_update_generator()
        out, grad_metrics = self.backward_step(batch, step, opt, self.update_generator, self.manual_backward)
        # Same steps at which Lightning writes logger rows ((step + 1) % log_every_n_steps == 0, and the last).
        log_now = ((step + 1) % self.cfg.log_every == 0) or (step + 1 == self.trainer.max_steps)
        if log_now:
            self.check_finite()  # stops the run; between log steps optimizer_step skips a non-finite step
        self.optimizer_step(opt, step)
        if log_now:
            self._log_diagnostics(out, batch, grad_metrics, step)
        return None

    def backward_step(self, batch: Batch, step: int, opt, generator: torch.Generator, backward):
        """A step up to the optimizer step, with device ops only: the update's forward, ``backward(loss)``, the
        gradient norms (guarded every step; logged at log steps) and clipping. Returns (update, grad norms).
        The benchmarks' compute-only bound runs this too, with ``loss.backward`` outside Lightning."""
        out = compute_update(self.nets(), batch, self.cfg, step, generator=generator)
        opt.zero_grad(set_to_none=True)
        backward(out.total)
        grad_metrics = {"grad_norm_critic": grad_norm(self.critic_parameters()),
                        "grad_norm_actor": grad_norm(self.actor_parameters())}
        self._guard(step, out, torch.linalg.vector_norm(torch.stack(list(grad_metrics.values()))))
        clip = self.cfg.algo.grad_clip
        if clip > 0 and self.q is not None:
            torch.nn.utils.clip_grad_norm_(self.critic_parameters(), clip, foreach=True)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.actor_parameters(), clip, foreach=True)
        return out, grad_metrics

    def optimizer_step(self, opt, step: Optional[int] = None) -> None:
        """The optimizer step, then the Polyak updates of the target critic (Q heads, and the encoder with
        ``algo.target_encoder``), of the acting weights' average
        (``step``: the update's 0-based index, default ``global_step``) and of the KL's lagged policy.

        Once a non-finite loss, Q-value or gradient was seen (this step or any before it: the guard's flags), the
        step is skipped on the device: fused Adam leaves weights, moments and step count as they were when its
        ``found_inf`` is set, as for AMP's loss scaler. No host sync: the flag stays on the device; the run
        stops at the next log step or save (:meth:`check_finite`). Gradients are all-reduced before this, so
        every rank skips alike. The Polyak copies then move toward unchanged, finite weights."""
        if self._first_bad is not None:
            torch_opt = getattr(opt, "optimizer", opt)  # Lightning wraps the torch optimizer
            _ensure_fused(torch_opt)
            torch_opt.found_inf = (self._first_bad >= 0).any().to(torch.float32)
        opt.step()
        if self.ema_actor is not None:
            enc, actor = self.trained_acting_nets()
            tau = 1.0 - ema_decay(self.cfg.algo.policy_ema, self.global_step if step is None else step)
            polyak_update(list(self.ema_encoder.parameters()) + list(self.ema_actor.parameters()),
                          list(enc.parameters()) + list(actor.parameters()), tau)
        if self.q is not None:
            polyak_update(list(self.q_target.parameters()), list(self.q.parameters()), self.cfg.algo.tau)
        if self.encoder_target is not None:
            polyak_update(list(self.encoder_target.parameters()), list(self.encoder.parameters()), self.cfg.algo.tau)
        if self.kl_actor is not None:
            polyak_update(list(self.kl_actor.parameters()), list(self.actor.parameters()), self.cfg.kl.tau)

    def _guard(self, step: int, out, gnorm: torch.Tensor) -> None:
        """Record (with device ops only, no host sync) the first step at which each guarded value is non-finite."""
        q = out.metrics.get("q_mean", out.total)
        bad = torch.stack([~torch.isfinite(out.total.detach()), ~torch.isfinite(q.detach()),
                           ~torch.isfinite(gnorm.detach())])
        if self._first_bad is None or self._first_bad.device != bad.device:
            self._first_bad = torch.full((len(GUARDED),), -1, dtype=torch.long, device=bad.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), torch.full_like(self._first_bad, step),
                                      self._first_bad)

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if any rank saw a non-finite value (one host sync; all ranks agree)."""
        if self._first_bad is None:
            return
        first = torch.where(self._first_bad < 0, torch.full_like(self._first_bad, 2**62), self._first_bad)
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        first = first.tolist()
        bad = [(s, name) for s, name in zip(first, GUARDED) if s < 2**62]
        if bad:
            step, _ = min(bad)
            names = ", ".join(name for s, name in bad if s == step)
            raise TrainingDiverged(f"training diverged: non-finite {names} at step {step} (checked at step "
                                   f"{self.global_step})")

    def _log_diagnostics(self, out, batch: Batch, grad_metrics: dict, step: int) -> None:
        metrics = dict(out.metrics)
        if self.q is not None:
            self._feature_diagnostics(metrics, out, batch)
        metrics.update(grad_metrics)
        now = time.perf_counter()
        if self._last_log_time is not None and step > self._last_log_step:
            world = self.trainer.world_size if self._trainer is not None else 1
            n = (step - self._last_log_step) * batch.action.shape[0] * world
            metrics["samples_per_s"] = torch.tensor(n / (now - self._last_log_time))
            metrics["steps_per_s"] = torch.tensor((step - self._last_log_step) / (now - self._last_log_time))
        self._last_log_time, self._last_log_step = now, step
        metrics = {k: v.float() for k, v in metrics.items()}
        # sync_dist averages over DDP ranks; this happens once every log_every steps only.
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=self.trainer.world_size > 1,
                      prog_bar=False)

    def _feature_diagnostics(self, metrics: dict, out, batch: Batch) -> None:
        # Encoder features phi(s)·phi(s') (the DR3 diagnostic, logged whether DR3 is on or off) ...
        metrics.update(D.feature_stats(out.phi, out.phi_next))
        metrics["srank"] = D.srank(out.phi)
        # ... and the Q heads' penultimate layer phi(s,a)·phi(s',a') with the a' of the backup.
        with torch.no_grad():
            pen = self.q(out.phi, batch.action, return_penultimate=True)[2]
            pen_next = self.q(out.phi_next, out.a_prime, return_penultimate=True)[2]
        metrics.update({f"pen_{k}": v for k, v in D.feature_stats(pen, pen_next).items()})
        metrics["srank_penultimate"] = D.srank(pen[0])

    # -- acting ---------------------------------------------------------------------------------------
    def trained_acting_nets(self) -> tuple[nn.Module, TanhGaussianActor]:
        """(encoder, actor) the actor loss trains: the actor's own encoder if separate, else the critic's."""
        return (self.actor_encoder if self.actor_encoder is not None else self.encoder), self.actor

    def acting_nets(self) -> tuple[nn.Module, TanhGaussianActor]:
        """(encoder, actor) that act: their moving average when there is one and ``act_with_ema``."""
        if self.act_with_ema and self.ema_actor is not None:
            return self.ema_encoder, self.ema_actor
        return self.trained_acting_nets()

    act = acting.act  # (shared with the copy a rollout worker holds: visual_dr3.learner.acting)
    full_action = acting.full_action

    # -- checkpoint contents --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # a diverged state is never saved (over last.ckpt or anywhere)
        checkpoint["visual_dr3"] = {
            "config": to_dict(self.cfg),
            "image_keys": list(self.hparams.image_keys),
            "proprio_keys": list(self.hparams.proprio_keys),
            "image_size": self.hparams.image_size,
            "action_dim": self.hparams.action_dim,
            "env_args": self.hparams.env_args,
            "dataset_meta": self.hparams.dataset_meta,
        }
        if self.update_generator is not None:
            checkpoint["visual_dr3"]["update_generator"] = self.update_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_generator_state = checkpoint.get("visual_dr3", {}).get("update_generator")
