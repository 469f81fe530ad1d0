"""One CQL + DR3 + SAC update as a function of networks and a batch (no Lightning in here).

The encoder runs once on the stacked [s; s'] batch (and its Polyak copy on s' when the target network has one,
``algo.target_encoder``). Everything is summed into one scalar so that a
single backward (one DDP gradient all-reduce) serves the critic, actor, entropy and Lagrange optimizers;
the pieces are kept apart by stopping gradients:
- critic loss  = TD + CQL(H) + c0 * DR3  -> critic encoder and Q heads;
- actor loss   = SAC (or BC warm-up)      -> actor (and its own encoder if separate); the Q heads are
  evaluated with detached parameters on detached features, so no actor gradient reaches the critic;
- alpha loss   -> log_alpha; Lagrange loss -> log_alpha_prime (the gap is detached).
As in CQL's reference code, all losses are computed from the same parameters, then all optimizers step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from visual_dr3.data.replay import Batch
from visual_dr3.learner import losses as L
from visual_dr3.learner.config import TrainConfig


@dataclass
class Nets:
    """The modules one update reads (owned by the LightningModule)."""

    encoder: nn.Module
    q: nn.Module
    q_target: nn.Module
    actor: nn.Module
    actor_encoder: Optional[nn.Module]
    log_alpha: Tensor
    log_alpha_prime: Optional[Tensor]
    kl_actor: Optional[nn.Module] = None  # pi_k, the lagged policy of the KL regularizer (kl.coef > 0)
    encoder_target: Optional[nn.Module] = None  # Polyak copy of ``encoder`` read by the target (algo.target_encoder)


@dataclass
class UpdateOut:
    """Total loss to backpropagate and detached tensors for logging (no host sync here)."""

    total: Tensor
    parts: dict[str, Tensor]
    metrics: dict[str, Tensor]
    phi: Tensor
    phi_next: Tensor
    a_prime: Tensor


def _stack(batch: Batch) -> dict[str, Tensor]:
    return {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}


def _frozen_q(q: nn.Module, phi: Tensor, action: Tensor):
    """Q heads evaluated with parameters detached: gradients reach the action (actor), not the critic."""
    params = {k: v.detach() for k, v in q.named_parameters()}
    return functional_call(q, params, (phi, action))


def imitation_score(actor: nn.Module, phi: Tensor, action: Tensor, kind: str) -> Tensor:
    """Per-sample score of dataset actions that imitation maximises, ``(B,)``: ``nll`` -> log pi(a|s);
    ``mse`` -> -sum_i (tanh(mu(s))_i - a_i)^2 (deterministic regression of the mean action)."""
    if kind == "mse":
        return -(actor.mode(phi) - action).pow(2).sum(-1)
    return actor.log_prob(phi, action)


def compute_bc_update(nets: Nets, batch: Batch, cfg: TrainConfig,
                      generator: Optional[torch.Generator] = None) -> UpdateOut:
    """Behaviour cloning (``algorithm: bc``): maximise the imitation score of the dataset action (log pi(a_data|s),
    or minus the squared error of the mean action with ``bc_loss: mse``) through ``nets.encoder``; s' is unused
    and there is no critic (:func:`~visual_dr3.learner.losses.bc_actor_loss` with no entropy term).
    """
    phi = nets.encoder(batch.obs)
    log_prob = imitation_score(nets.actor, phi, batch.action, cfg.algo.bc_loss)
    loss = L.bc_actor_loss(log_prob, log_prob.detach(), 0.0)
    with torch.no_grad():
        mode = nets.actor.mode(phi)
        _, logp = nets.actor.sample(phi, generator=generator)
    metrics = {"actor_loss": loss.detach(), "bc_loss": loss.detach(),
               "bc_mse": (mode - batch.action).pow(2).mean(), "entropy": (-logp).mean()}
    zero = phi.new_zeros(())
    return UpdateOut(total=loss, parts={"critic": zero, "actor": loss, "alpha": zero, "lagrange": zero},
                     metrics=metrics, phi=phi.detach(), phi_next=phi.detach(), a_prime=batch.action)


def compute_update(nets: Nets, batch: Batch, cfg: TrainConfig, step: int,
                   generator: Optional[torch.Generator] = None) -> UpdateOut:
    """All losses of one step. ``step`` is the global step (a Python int: BC warm-up switch).

    The encoder runs once on the stacked ``[s; s']`` batch. Random draws, in this order, all from
    ``generator``: the policy's a' (target; drawn with ``target_action mean`` too), ``num_actions`` more with the
    max-Q backup, the CQL actions (uniform, pi(s), pi(s')), the actor's action.
    """
    if cfg.algorithm == "bc":
        return compute_bc_update(nets, batch, cfg, generator)
    algo, cql, dr3 = cfg.algo, cfg.cql, cfg.dr3
    B = batch.action.shape[0]
    obs_all = _stack(batch)
    phi_all = nets.encoder(obs_all)
    phi, phi_next = phi_all[:B], phi_all[B:]
    actor_phi_all = phi_all.detach() if nets.actor_encoder is None else nets.actor_encoder(obs_all)
    actor_phi, actor_phi_next = actor_phi_all[:B], actor_phi_all[B:]
    alpha = nets.log_alpha.exp().detach()

    next_kl = None
    if cfg.kl.coef > 0:
        with torch.no_grad():
            next_kl = _kl_to_lagged(nets, actor_phi_next)
    if nets.encoder_target is not None:  # the full target network: phi_target(s') under the target Q heads
        with torch.no_grad():
            target_phi_next = nets.encoder_target(batch.next_obs)
    else:
        target_phi_next = phi_next
    target, a_pi_next, a_backup = _td_target(nets, batch, cfg, target_phi_next, actor_phi_next, alpha, generator,
                                             None if next_kl is None else cfg.kl.coef * next_kl)
    want_pen = dr3.coef > 0 and dr3.features in ("penultimate", "both")
    q_out = nets.q(phi, batch.action, return_penultimate=want_pen)
    q1, q2 = q_out[0], q_out[1]
    td_loss = L.critic_td_loss(q1, q2, target)
    cql_loss, gap, alpha_prime, lagrange_loss = _cql_terms(nets, batch, cfg, phi, actor_phi, actor_phi_next, q1, q2,
                                                           generator)
    # a' of the penultimate DR3 term: the backup's own a' (dataset a' for sarsa, pi's sample or mean for td)
    a_prime = {"backup": a_backup, "data": batch.next_action, "policy": a_pi_next}[dr3.next_action].detach()
    dr3_term = _dr3_term(nets, batch, cfg, phi, phi_next, q_out, a_prime)
    critic_loss = td_loss + cql_loss + dr3.coef * dr3_term
    actor_loss, alpha_loss, logp_pi, awr_w = _actor_terms(nets, batch, cfg, step, phi, actor_phi, q1, q2, alpha,
                                                          generator)
    kl = None
    if cfg.kl.coef > 0:
        kl = _kl_to_lagged(nets, actor_phi)
        if step >= cfg.algo.bc_warmup_steps:  # the regularized greedy step: pi stays near pi_k
            actor_loss = actor_loss + cfg.kl.coef * kl.mean()

    total = critic_loss + actor_loss + alpha_loss + lagrange_loss
    metrics = {
        "critic_loss": critic_loss.detach(),
        "td_loss": td_loss.detach(),
        "cql_loss": cql_loss.detach(),
        "cql_gap": gap.detach(),
        "dr3_loss": (dr3.coef * dr3_term).detach(),
        "q_mean": (0.5 * (q1 + q2)).mean().detach(),
        "target_q": target.mean().detach(),
        "actor_loss": actor_loss.detach(),
        "alpha": alpha,
        "alpha_loss": alpha_loss.detach(),
        "entropy": (-logp_pi).mean().detach(),
        # how far the policy's mean action is from the data's (what BC minimises; for every algorithm)
        "bc_mse": (nets.actor.mode(actor_phi.detach()) - batch.action).pow(2).mean().detach(),
    }
    if batch.mc_return is not None:  # is Q on the reward's scale? Q at data actions vs the data's return to go
        q_data = (0.5 * (q1 + q2)).detach()
        metrics["q_data"] = q_data.mean()
        metrics["mc_return"] = batch.mc_return.mean()
        metrics["q_minus_mc"] = (q_data - batch.mc_return).mean()
    if awr_w is not None:
        metrics["awr_weight"] = awr_w.mean().detach()
    if cql.lagrange:
        metrics["alpha_prime"] = alpha_prime.detach()
    if kl is not None:
        metrics["kl_policy"] = kl.mean().detach()  # KL(pi(.|s) || pi_k(.|s)): how far the policy moved
        metrics["kl_backup"] = (cfg.kl.coef * next_kl).mean().detach()  # lambda * KL at s', off V(s')
    parts = {"critic": critic_loss, "actor": actor_loss, "alpha": alpha_loss, "lagrange": lagrange_loss}
    return UpdateOut(total=total, parts=parts, metrics=metrics, phi=phi.detach(), phi_next=phi_next.detach(),
                     a_prime=a_prime.detach())


def _kl_to_lagged(nets: Nets, actor_phi: Tensor) -> Tensor:
    """``KL(pi(.|s) || pi_k(.|s))`` ``(B,)``, exact (:func:`~visual_dr3.learner.losses.gaussian_kl`): the actor's
    head and its lagged copy ``nets.kl_actor`` on the same actor features (the gradient reaches pi only).

    The KL-regularized update of "Leverage the Average" (Vieillard et al. 2020, MD-MPI with KL weight lambda
    = ``kl.coef`` and entropy weight tau = alpha): pi_{k+1} = argmax E_pi[Q] - lambda KL(pi || pi_k) + tau H(pi)
    (the actor loss gains ``lambda * KL`` at s), and the backup's value of s' loses ``lambda * KL(pi(.|s') ||
    pi_k(.|s'))``, the expectation under pi of lambda log(pi / pi_k) that their backup subtracts. Built in this
    form rather than Munchausen's (a scaled log pi(a|s) added to the reward, the same scheme in disguise)
    because it carries over to a tanh-Gaussian actor exactly (a closed-form KL, no log-prob of boundary
    actions to clip) and works with either backup (``td`` or ``sarsa``: the penalty is a function of s' only).
    pi_k is a Polyak-averaged copy of the actor's head (rate ``kl.tau``), a smooth stand-in for the paper's
    previous iterate; it reads the current actor features. With n-step returns the penalty is applied at the
    bootstrap state s_{t+n} only (the intermediate states are not in the batch).
    """
    mean, log_std = nets.actor(actor_phi.detach())
    with torch.no_grad():
        mean_k, log_std_k = nets.kl_actor(actor_phi.detach())
    return L.gaussian_kl(mean, log_std, mean_k, log_std_k)


@torch.no_grad()
def _td_target(nets: Nets, batch: Batch, cfg: TrainConfig, phi_next: Tensor, actor_phi_next: Tensor, alpha: Tensor,
               generator: Optional[torch.Generator],
               value_penalty: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(target, a_pi_next, a_backup)``: the TD target of Q(s, a) (no gradient), a policy sample at s' and the
    a' the target read (the dataset's for ``sarsa``; for ``td`` the sample, or pi's mean action with
    ``algo.target_action mean``; the sample under the max-Q backup, which reads ``num_actions`` more).

    ``phi_next``: the features the target Q heads read (the target encoder's when there is one).
    n-step batches carry gamma^k per sample (k steps summed into the reward); one-step ones use gamma.
    ``value_penalty``: subtracted from V(s') (the KL-regularized backup's ``lambda * KL`` at s').
    """
    algo, cql = cfg.algo, cfg.cql
    discount = batch.discount if batch.discount is not None else algo.discount
    a_pi_next, logp_pi_next = nets.actor.sample(actor_phi_next.detach(), generator=generator)
    if algo.backup == "sarsa":
        a_next, next_logp = batch.next_action, None
    elif algo.target_action == "mean":
        a_next, next_logp = nets.actor.mode(actor_phi_next.detach()), None
    else:
        a_next, next_logp = a_pi_next, logp_pi_next
    if cql.max_q_backup and algo.backup == "td":
        a_n, _ = nets.actor.sample(actor_phi_next.detach(), generator=generator, num_samples=cql.num_actions)
        tq1, tq2 = nets.q_target(phi_next.detach(), a_n)
        return L.td_target(tq1, tq2, batch.reward, batch.done, discount, max_q_backup=True,
                           value_penalty=value_penalty), a_pi_next, a_pi_next
    tq1, tq2 = nets.q_target(phi_next.detach(), a_next)
    use_ent = algo.entropy_backup and next_logp is not None
    target = L.td_target(tq1, tq2, batch.reward, batch.done, discount,
                         next_log_prob=next_logp if use_ent else None, alpha=alpha if use_ent else None,
                         value_penalty=value_penalty)
    return target, a_pi_next, a_next


def _cql_terms(nets: Nets, batch: Batch, cfg: TrainConfig, phi: Tensor, actor_phi: Tensor, actor_phi_next: Tensor,
               q1: Tensor, q2: Tensor, generator: Optional[torch.Generator]):
    """``(cql_loss, gap, alpha_prime, lagrange_loss)`` of CQL(H) over both Q heads (zeros when it is off)."""
    cql = cfg.cql
    zero = phi.new_zeros(())
    if not (cql.min_q_weight > 0 or cql.lagrange):
        return zero, zero, zero, zero
    B, A = batch.action.shape
    N = cql.num_actions
    with torch.no_grad():
        a_rand = torch.rand((B, N, A), device=phi.device, generator=generator) * 2 - 1
        a_pi_n, logp_pi_n = nets.actor.sample(actor_phi.detach(), generator=generator, num_samples=N)
        a_next_n, logp_next_n = nets.actor.sample(actor_phi_next.detach(), generator=generator, num_samples=N)
    q1_r, q2_r = nets.q(phi, a_rand)
    q1_p, q2_p = nets.q(phi, a_pi_n)
    q1_n, q2_n = nets.q(phi, a_next_n)
    kw = dict(temperature=cql.temperature, min_q_weight=cql.min_q_weight, gap_floor=cql.gap_floor)
    pen1, gap1 = L.cql_penalty(q1, q1_r, q1_p, logp_pi_n, q1_n, logp_next_n, A, **kw)
    pen2, gap2 = L.cql_penalty(q2, q2_r, q2_p, logp_pi_n, q2_n, logp_next_n, A, **kw)
    gap = 0.5 * (gap1.mean() + gap2.mean())
    if not cql.lagrange:
        return pen1 + pen2, gap, zero, zero
    gaps = torch.stack([gap1, gap2])  # the multiplier keeps the gap it weights (floored, with gap_floor) at target
    if cql.gap_floor is not None:
        gaps = gaps.clamp(min=cql.gap_floor)
    alpha_prime, lagrange_loss = L.cql_lagrange_loss(nets.log_alpha_prime, gaps, cql.target_gap, cql.min_q_weight)
    return alpha_prime * (pen1 + pen2 - 2 * cql.target_gap), gap, alpha_prime, lagrange_loss


def _dr3_term(nets: Nets, batch: Batch, cfg: TrainConfig, phi: Tensor, phi_next: Tensor, q_out: tuple,
              a_prime: Tensor) -> Tensor:
    """The DR3 regularizer (before ``coef``) on the encoder features, the Q heads' penultimate layer, or both."""
    dr3 = cfg.dr3
    if dr3.coef <= 0:
        return phi.new_zeros(())
    B = phi.shape[0]
    parts = []
    kw = dict(mask_done=dr3.mask_done, absolute=dr3.absolute, detach_next=dr3.detach_next)
    if dr3.features in ("encoder", "both"):
        parts.append(L.dr3_loss(phi, phi_next, batch.done, **kw)[0])
    if dr3.features in ("penultimate", "both"):
        pen_cur = q_out[2]  # (2, B, H): both heads' penultimate activations
        pen_next = nets.q(phi_next, a_prime, return_penultimate=True)[2]
        parts.append(L.dr3_loss(pen_cur, pen_next, batch.done.expand(2, B), **kw)[0])
    return torch.stack(parts).sum()


def _actor_terms(nets: Nets, batch: Batch, cfg: TrainConfig, step: int, phi: Tensor, actor_phi: Tensor, q1: Tensor,
                 q2: Tensor, alpha: Tensor, generator: Optional[torch.Generator]):
    """``(actor_loss, alpha_loss, logp_pi, awr_weights or None)``: imitation during the BC warm-up, then SAC
    (or AWR) plus ``bc_weight`` times imitation; the temperature's loss when it is learned."""
    algo = cfg.algo
    # separate_bc: the sampled action (Q and entropy terms) sees the actor's features with the gradient
    # stopped, so only the imitation terms (imitation_score on actor_phi) shape the actor's encoder
    pi_phi = actor_phi.detach() if cfg.model.actor_encoder == "separate_bc" else actor_phi
    a_pi, logp_pi = nets.actor.sample(pi_phi, generator=generator)
    awr_w = None
    if step < algo.bc_warmup_steps:
        actor_loss = L.bc_actor_loss(imitation_score(nets.actor, actor_phi, batch.action, algo.bc_loss), logp_pi,
                                     alpha)
    else:
        if algo.actor_objective == "awr":
            with torch.no_grad():  # V(s) ~ Q at the policy's mean action (its spread is not imitated with mse)
                v = torch.min(*nets.q(phi.detach(), nets.actor.mode(actor_phi.detach())))
            actor_loss, awr_w = L.awr_actor_loss(imitation_score(nets.actor, actor_phi, batch.action, algo.bc_loss),
                                                 torch.min(q1, q2), v, algo.awr_beta, algo.awr_max_weight,
                                                 algo.awr_normalize)
        else:
            qp1, qp2 = _frozen_q(nets.q, phi.detach(), a_pi)
            actor_loss = L.sac_actor_loss(torch.min(qp1, qp2), logp_pi, alpha)
        if algo.bc_weight > 0:
            actor_loss = actor_loss - algo.bc_weight * imitation_score(nets.actor, actor_phi, batch.action,
                                                                       algo.bc_loss).mean()
    if algo.auto_alpha:
        target_entropy = -float(batch.action.shape[1]) if algo.target_entropy is None else algo.target_entropy
        alpha_loss = L.alpha_loss(nets.log_alpha, logp_pi.detach(), target_entropy)
    else:
        alpha_loss = phi.new_zeros(())
    return actor_loss, alpha_loss, logp_pi, awr_w


def ema_decay(max_decay: float, step: int) -> float:
    """Decay of the acting weights' moving average after update ``step`` (0-based): ``min(max_decay,
    (1 + step) / (10 + step))``, so the first updates are followed closely (0.1 at step 0, 0.5 at step 8)."""
    return min(float(max_decay), (1.0 + step) / (10.0 + step))
