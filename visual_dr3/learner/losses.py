"""Pure loss functions for CQL + SAC + DR3 (tensors in, tensors out).

No module state, no ``.item()``, no host synchronisation: every function here is safe inside a
compiled or CUDA-graphed step. Shape conventions: ``B`` batch, ``N`` sampled actions per state,
``A`` action dimension. Q-values are ``(B,)`` (one per state-action), sampled Q-values ``(B, N)``.

References followed (read, not copied):
- CQL: aviralkumar2907/CQL ``d4rl/rlkit/torch/sac/cql.py`` (``min_q_version=3``, the importance
  sampled CQL(H); ``with_lagrange``; ``max_q_backup``; ``deterministic_backup``).
- SAC auto-entropy as in that file (``alpha_loss = -(log_alpha * (log_pi + target_entropy)).mean()``).
- DR3: Kumar et al. 2021 (arXiv 2112.04716), explicit regularizer ``c0 * phi(s,a) . phi(s',a')``.
- KL toward the previous policy: Vieillard et al. 2020, "Leverage the Average" (arXiv 2003.14089), the
  regularized greedy step and backup of their MD-MPI scheme (:func:`gaussian_kl`, ``value_penalty``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "td_target",
    "critic_td_loss",
    "cql_penalty",
    "cql_lagrange_loss",
    "dr3_loss",
    "sac_actor_loss",
    "bc_actor_loss",
    "awr_actor_loss",
    "alpha_loss",
    "gaussian_kl",
]


def _as_detached(x: Tensor | float) -> Tensor | float:
    return x.detach() if isinstance(x, Tensor) else x


def td_target(
    next_q1: Tensor,
    next_q2: Tensor,
    reward: Tensor,
    done: Tensor,
    discount: float,
    next_log_prob: Tensor | None = None,
    alpha: Tensor | float | None = None,
    *,
    max_q_backup: bool = False,
    value_penalty: Tensor | None = None,
) -> Tensor:
    """Bootstrapped target ``y = r + discount * (1 - done) * V(s')`` (detached), shape ``(B,)``.

    Ordinary backup (``next_q*`` of shape ``(B,)``, target-network Q at ``a' ~ pi(.|s')``)::

        V(s') = min(q1', q2') - alpha * log pi(a'|s')      # soft backup, when next_log_prob and alpha given
        V(s') = min(q1', q2')                              # deterministic backup (CQL's default), otherwise

    Max-Q backup (``max_q_backup=True``, ``next_q*`` of shape ``(B, N)``: N policy samples at s')::

        j*    = argmax_j min(q1'[:, j], q2'[:, j])
        V(s') = min(q1', q2')[:, j*]  (- alpha * log pi(a'_{j*}|s') if the entropy term is given,
                                       next_log_prob then of shape (B, N))

    i.e. the max over the N samples of the twin minimum (as in young-geng/JaxCQL's
    ``cql_max_target_backup``). Note aviralkumar2907/CQL instead takes ``min(max_j q1', max_j q2')``
    (max per head, then min); the two agree when both heads rank the samples alike.

    ``done`` is 1.0 for terminal transitions (no bootstrap). ``alpha`` is detached.

    ``value_penalty`` ``(B,)`` (optional) is subtracted from V(s'): the KL-regularized backup passes
    ``lambda * KL(pi(.|s') || pi_k(.|s'))`` (:func:`gaussian_kl`); None leaves the target exactly as above.
    """
    if (next_log_prob is None) != (alpha is None):
        raise ValueError("td_target: give both next_log_prob and alpha (soft backup) or neither (deterministic)")
    if next_q1.shape != next_q2.shape:
        raise ValueError(f"td_target: next_q1 {tuple(next_q1.shape)} and next_q2 {tuple(next_q2.shape)} differ")
    q_min = torch.minimum(next_q1, next_q2)
    if max_q_backup:
        if q_min.dim() != 2:
            raise ValueError(f"td_target: max_q_backup needs next_q of shape (B, N), got {tuple(q_min.shape)}")
        v, idx = q_min.max(dim=1)
        if next_log_prob is not None:
            if next_log_prob.shape != q_min.shape:
                raise ValueError("td_target: with max_q_backup next_log_prob must be (B, N) like next_q")
            v = v - _as_detached(alpha) * next_log_prob.gather(1, idx.unsqueeze(1)).squeeze(1)
    else:
        if q_min.dim() != 1:
            raise ValueError(
                f"td_target: next_q must be (B,) (or (B, N) with max_q_backup=True), got {tuple(q_min.shape)}"
            )
        v = q_min
        if next_log_prob is not None:
            v = v - _as_detached(alpha) * next_log_prob
    if value_penalty is not None:
        if value_penalty.shape != v.shape:
            raise ValueError(f"td_target: value_penalty {tuple(value_penalty.shape)} must be (B,) like V(s') "
                             f"{tuple(v.shape)}")
        v = v - value_penalty.detach()
    return (reward + discount * (1.0 - done) * v).detach()


def critic_td_loss(q1: Tensor, q2: Tensor, target: Tensor) -> Tensor:
    """Twin-critic TD loss ``MSE(q1, y) + MSE(q2, y)`` (scalar; ``y`` detached).

    This is CQL's reference ``qf1_loss + qf2_loss`` with ``nn.MSELoss()`` (mean over the batch, no 0.5
    factor): each head gets exactly the gradient it gets in the reference, where the two losses are
    back-propagated into separate networks.
    """
    target = target.detach()
    return (q1 - target).pow(2).mean() + (q2 - target).pow(2).mean()


def cql_penalty(
    q_data: Tensor,
    q_rand: Tensor,
    q_pi: Tensor,
    logp_pi: Tensor,
    q_next_pi: Tensor,
    logp_next_pi: Tensor,
    action_dim: int,
    temperature: float = 1.0,
    min_q_weight: float = 1.0,
    gap_floor: float | None = None,
) -> tuple[Tensor, Tensor]:
    """CQL(H) penalty with importance sampling, for ONE Q head (the caller sums over the twin heads).

    Inputs (all evaluated with the *online* head, all at the current state ``s``)::

        q_data        (B,)    Q(s, a_data)
        q_rand        (B, Nr) Q(s, a), a ~ Uniform[-1, 1]^A        (density 0.5^A)
        q_pi          (B, N)  Q(s, a), a ~ pi(.|s),  logp_pi       (B, N) = log pi(a|s)
        q_next_pi     (B, N)  Q(s, a), a ~ pi(.|s'), logp_next_pi  (B, N) = log pi(a|s')

    (``q_next_pi`` is Q at the *current* state for actions drawn at the next state, as in the reference.)
    Per sample, with T = ``temperature``::

        lse_i = T * logsumexp_j( cat[q_rand - log(0.5^A), q_pi - logp_pi, q_next_pi - logp_next_pi]_ij / T )
        gap_i = lse_i - q_data_i
        penalty = min_q_weight * mean_i(gap_i)

    which equals the reference's ``logsumexp(cat_q/temp).mean() * min_q_weight * temp -
    q_pred.mean() * min_q_weight`` (``min_q_version=3``). The log-densities are detached (as there).
    ``min_q_weight`` is applied here; pass 1.0 and scale yourself if preferred.

    ``gap_floor`` (optional): the penalty averages ``max(gap_i, gap_floor)`` instead, so a sample whose data
    action already sits more than ``-gap_floor`` above the logsumexp adds no gradient (CQL stops raising it).

    Returns ``(penalty scalar, gap (B,))``; ``gap`` is unweighted, unclipped and carries gradient (detach it
    for logging / the Lagrange update).
    """
    random_log_density = action_dim * math.log(0.5)  # log(0.5 ** A), negative
    cat_q = torch.cat(
        [
            q_rand - random_log_density,
            q_pi - logp_pi.detach(),
            q_next_pi - logp_next_pi.detach(),
        ],
        dim=1,
    )
    lse = torch.logsumexp(cat_q / temperature, dim=1) * temperature
    gap = lse - q_data
    pushed = gap if gap_floor is None else gap.clamp(min=gap_floor)
    return min_q_weight * pushed.mean(), gap


def cql_lagrange_loss(
    log_alpha_prime: Tensor,
    gap: Tensor,
    target_gap: float,
    min_q_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Lagrange multiplier for CQL (the reference's ``with_lagrange``), returns ``(alpha_prime, loss)``.

    ``gap``: the per-sample gaps returned by :func:`cql_penalty` for every head, stacked (e.g. ``(2, B)``)
    or a single ``(B,)``; it is detached here. With ``alpha' = clamp(exp(log_alpha_prime), 0, 1e6)``::

        loss = -alpha' * (min_q_weight * mean(gap) - target_gap)

    (mean over heads and batch). This equals the reference's ``(-min_qf1_loss - min_qf2_loss) * 0.5``
    with ``min_qf_h_loss = alpha' * (min_q_weight * mean(gap_h) - target_action_gap)``. Minimising it
    raises alpha' while the weighted gap is above ``target_gap`` and lowers it below.

    The returned ``alpha_prime`` is detached: the critic's CQL term per head is then
    ``alpha_prime * (penalty_h - target_gap)`` with ``penalty_h`` from :func:`cql_penalty` (the constant
    ``-alpha_prime * target_gap`` changes only the logged value, not the gradient).
    """
    alpha_prime = torch.clamp(log_alpha_prime.exp(), min=0.0, max=1e6)
    loss = -(alpha_prime * (min_q_weight * gap.detach().mean() - target_gap)).sum()
    return alpha_prime.detach(), loss


def dr3_loss(
    phi: Tensor,
    phi_next: Tensor,
    done: Tensor | None = None,
    *,
    mask_done: bool = False,
    absolute: bool = False,
    detach_next: bool = False,
) -> tuple[Tensor, Tensor]:
    """DR3 explicit regularizer (NOT multiplied by c0; the caller does ``loss + c0 * dr3``).

    ``phi`` and ``phi_next``: features of ``(s, a)`` and ``(s', a')``, shape ``(*lead, D)`` (e.g. ``(B, D)``
    encoder features, or ``(2, B, H)`` penultimate activations of the twin heads)::

        dot  = sum_d phi[..., d] * phi_next[..., d]          # (*lead,)
        dot  = dot * (1 - done)      if mask_done             # done broadcast against *lead
        dot  = |dot|                 if absolute
        loss = mean over all leading dims of dot

    ``detach_next`` stops the gradient through ``phi_next`` (the s' side). Returns ``(loss, dot)`` where
    ``dot`` is the per-sample term whose mean is the loss (after masking / abs).
    """
    if phi.shape != phi_next.shape:
        raise ValueError(f"dr3_loss: phi {tuple(phi.shape)} and phi_next {tuple(phi_next.shape)} differ")
    if detach_next:
        phi_next = phi_next.detach()
    dot = (phi * phi_next).sum(dim=-1)
    if mask_done:
        if done is None:
            raise ValueError("dr3_loss: mask_done=True needs done")
        dot = dot * (1.0 - done)
    if absolute:
        dot = dot.abs()
    return dot.mean(), dot


def sac_actor_loss(q_pi_min: Tensor, logp: Tensor, alpha: Tensor | float) -> Tensor:
    """SAC actor loss ``mean(alpha * log pi(a|s) - min(Q1, Q2)(s, a))``, ``a ~ pi(.|s)`` reparameterised.

    ``alpha`` is detached (it has its own loss, :func:`alpha_loss`).
    """
    return (_as_detached(alpha) * logp - q_pi_min).mean()


def bc_actor_loss(log_prob_data: Tensor, logp: Tensor, alpha: Tensor | float) -> Tensor:
    """Behaviour-cloning warm-up actor loss (CQL's ``policy_eval_start``, COG's first policy steps)::

        mean(alpha * log pi(a_pi|s) - log pi(a_data|s))

    ``log_prob_data`` = log-likelihood of the dataset action under the policy, ``logp`` = log-prob of a
    fresh policy sample (entropy term). ``alpha`` is detached.
    """
    return (_as_detached(alpha) * logp - log_prob_data).mean()


def awr_actor_loss(log_prob_data: Tensor, q_data: Tensor, v: Tensor, beta: float,
                   max_weight: float, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Advantage-weighted regression of the actor on dataset actions (AWAC, CRR "exp", IQL's extraction)::

        A = q_data - v                       # detached: min_i Q_i(s, a_data) - V(s), e.g. min_i Q_i(s, pi's mean)
        w = min(exp(A / beta), max_weight)   # normalize: min(B * softmax(A / beta), max_weight), mean 1 before the clip
        loss = -mean(w * log pi(a_data|s))

    The policy only ever imitates actions of the data, more so where the critic ranks them above its own.
    Returns ``(loss, w)``.
    """
    adv = (q_data - v).detach()
    if normalize:  # exp(A / beta) / mean_batch exp(A / beta), computed without overflow (d3rlpy's AWAC)
        w = (torch.softmax(adv.reshape(-1) / beta, dim=0) * adv.numel()).reshape(adv.shape).clamp(max=max_weight)
    else:
        w = torch.exp(adv / beta).clamp(max=max_weight)
    return -(w * log_prob_data).mean(), w


def alpha_loss(log_alpha: Tensor, logp: Tensor, target_entropy: float) -> Tensor:
    """SAC automatic entropy tuning: ``-mean(log_alpha * (log pi(a|s) + target_entropy))``, logp detached.

    As in the CQL reference (gradient on ``log_alpha``; ``alpha = exp(log_alpha)`` elsewhere).
    ``target_entropy`` is usually ``-action_dim``.
    """
    return -(log_alpha * (logp.detach() + target_entropy)).mean()


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians ``p = N(mean_p, exp(log_std_p)^2)``, ``q`` likewise, ``(B,)``::

        KL = sum_i [ log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2 ]

    For two tanh-Gaussian policies it is also the KL of the squashed distributions: tanh is a bijection, and
    KL is invariant under one (the Jacobians cancel in the log ratio). Exact, no sampling noise.
    """
    d = log_std_q - log_std_p
    return (d + 0.5 * (torch.exp(-2.0 * d) + ((mean_p - mean_q) * torch.exp(-log_std_q)).pow(2)) - 0.5).sum(-1)
