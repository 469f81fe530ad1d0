"""Exact-value tests of the pure CQL / SAC / DR3 losses (expected numbers worked out by hand)."""

import math

import pytest
import torch

from visual_dr3.learner import losses as L


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), t(expected), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- td_target

def test_td_target_deterministic_with_done_mask():
    # min(q1, q2) = [1.0, 0.5]; second transition is terminal -> no bootstrap.
    y = L.td_target(t([1.0, 3.0], True), t([2.0, 0.5], True), t([0.5, 1.0]), t([0.0, 1.0]), 0.9)
    assert y.tolist() == pytest.approx([0.5 + 0.9 * 1.0, 1.0], abs=1e-12)
    assert not y.requires_grad


def test_td_target_soft_backup_entropy_term():
    # V = min - alpha*logp = [1.0 - 0.2*(-1.0), 0.5 - 0.2*2.0] = [1.2, 0.1]; second is terminal.
    alpha = t(0.2, True)
    y = L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.5, 1.0]), t([0.0, 1.0]), 0.9,
                    next_log_prob=t([-1.0, 2.0], True), alpha=alpha)
    assert y.tolist() == pytest.approx([0.5 + 0.9 * 1.2, 1.0], abs=1e-12)
    assert not y.requires_grad
    # not terminal: the entropy term enters
    y2 = L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.0, 0.0]), t([0.0, 0.0]), 0.5,
                     next_log_prob=t([-1.0, 2.0]), alpha=0.2)
    assert y2.tolist() == pytest.approx([0.5 * 1.2, 0.5 * 0.1], abs=1e-12)


def test_td_target_max_q_backup():
    q1 = t([[1.0, 4.0], [2.0, 0.0]])
    q2 = t([[3.0, 2.0], [1.0, 5.0]])
    # twin min = [[1, 2], [1, 0]] -> max over N = [2 (j=1), 1 (j=0)]
    y = L.td_target(q1, q2, t([0.0, 0.0]), t([0.0, 0.0]), 0.5, max_q_backup=True)
    assert y.tolist() == pytest.approx([1.0, 0.5], abs=1e-12)
    # entropy term taken at the argmax sample: [2 - 0.3, 1 - 0.7]
    logp = t([[0.1, 0.3], [0.7, 0.9]])
    y = L.td_target(q1, q2, t([1.0, 0.0]), t([0.0, 1.0]), 0.5, next_log_prob=logp, alpha=1.0, max_q_backup=True)
    assert y.tolist() == pytest.approx([1.0 + 0.5 * 1.7, 0.0], abs=1e-12)


def test_td_target_shape_errors():
    with pytest.raises(ValueError):
        L.td_target(t([[1.0, 2.0]]), t([[1.0, 2.0]]), t([0.0]), t([0.0]), 0.9)  # (B,N) without max backup
    with pytest.raises(ValueError):
        L.td_target(t([1.0]), t([1.0]), t([0.0]), t([0.0]), 0.9, next_log_prob=t([0.0]))  # alpha missing


# ---------------------------------------------------------------- critic TD loss

def test_critic_td_loss_sum_of_mses():
    q1, q2 = t([1.0, 2.0], True), t([0.0, 4.0], True)
    target = t([1.5, 1.0], True)
    loss = L.critic_td_loss(q1, q2, target)
    # MSE1 = (0.25 + 1) / 2 = 0.625, MSE2 = (2.25 + 9) / 2 = 5.625
    assert loss.item() == pytest.approx(6.25, abs=1e-12)
    loss.backward()
    assert q1.grad.tolist() == pytest.approx([2 * (1.0 - 1.5) / 2, 2 * (2.0 - 1.0) / 2])
    assert target.grad is None


# ---------------------------------------------------------------- CQL

def _cql_inputs(grad=False):
    return dict(
        q_data=t([1.0, 0.0], grad),
        q_rand=t([[0.0], [1.0]], grad),
        q_pi=t([[1.0], [0.5]], grad),
        logp_pi=t([[0.5], [-0.5]], grad),
        q_next_pi=t([[2.0], [0.0]], grad),
        logp_next_pi=t([[1.0], [0.0]], grad),
    )


def test_cql_penalty_importance_sampled_exact():
    inp = _cql_inputs(grad=True)
    pen, gap = L.cql_penalty(**inp, action_dim=1)
    # row 0: [0 + log2, 1 - 0.5, 2 - 1] ; row 1: [1 + log2, 0.5 + 0.5, 0 - 0]
    lse0 = math.log(2.0 + math.exp(0.5) + math.exp(1.0))
    lse1 = math.log(2.0 * math.e + math.e + 1.0)
    assert gap.tolist() == pytest.approx([lse0 - 1.0, lse1 - 0.0], abs=1e-12)
    assert pen.item() == pytest.approx(((lse0 - 1.0) + lse1) / 2, abs=1e-12)
    pen.backward()
    assert inp["q_data"].grad.tolist() == pytest.approx([-0.5, -0.5])
    assert inp["logp_pi"].grad is None and inp["logp_next_pi"].grad is None  # densities detached
    # d/dq_rand[0] = softmax weight / B
    w0 = 2.0 / (2.0 + math.exp(0.5) + math.exp(1.0))
    assert inp["q_rand"].grad[0, 0].item() == pytest.approx(w0 / 2)


def test_cql_penalty_action_dim_temperature_weight_and_uneven_n():
    # A = 3: random term shifted by +3 log 2; Nr = 2, N = 1; temperature 2; min_q_weight 5.
    q_data = t([0.5])
    q_rand = t([[0.0, -1.0]])
    q_pi, logp_pi = t([[1.0]]), t([[2.0]])
    q_next_pi, logp_next_pi = t([[0.0]]), t([[-3.0]])
    pen, gap = L.cql_penalty(q_data, q_rand, q_pi, logp_pi, q_next_pi, logp_next_pi, action_dim=3,
                             temperature=2.0, min_q_weight=5.0)
    s = 3 * math.log(2.0)
    xs = [0.0 + s, -1.0 + s, 1.0 - 2.0, 0.0 + 3.0]
    lse = 2.0 * math.log(sum(math.exp(x / 2.0) for x in xs))
    assert gap.item() == pytest.approx(lse - 0.5, abs=1e-12)
    assert pen.item() == pytest.approx(5.0 * (lse - 0.5), abs=1e-12)


def test_cql_lagrange_loss():
    log_ap = t(math.log(2.0), True)
    gap = t([[1.0, 3.0], [2.0, 2.0]], True)  # two heads, B = 2, mean 2
    alpha_prime, loss = L.cql_lagrange_loss(log_ap, gap, target_gap=5.0, min_q_weight=2.0)
    assert alpha_prime.item() == pytest.approx(2.0)
    assert not alpha_prime.requires_grad
    # -2 * (2 * 2 - 5) = 2; d/dlog_ap = -exp(log_ap) * (4 - 5) = 2
    assert loss.item() == pytest.approx(2.0, abs=1e-12)
    loss.backward()
    assert log_ap.grad.item() == pytest.approx(2.0, abs=1e-12)
    assert gap.grad is None
    # per-head mean over heads == mean of the reference's two per-head terms
    ap, loss_big = L.cql_lagrange_loss(t(20.0), t([1.0]), target_gap=0.0)
    assert ap.item() == 1e6  # clamped
    assert loss_big.item() == pytest.approx(-1e6)


# ---------------------------------------------------------------- DR3

PHI = [[1.0, 2.0], [3.0, -1.0]]
PHI_NEXT = [[2.0, 0.5], [1.0, 4.0]]  # dots: 3, -1


@pytest.mark.parametrize(
    "kw,done,expected_dot",
    [
        (dict(), None, [3.0, -1.0]),
        (dict(absolute=True), None, [3.0, 1.0]),
        (dict(mask_done=True), [0.0, 1.0], [3.0, 0.0]),
        (dict(mask_done=True, absolute=True), [1.0, 0.0], [0.0, 1.0]),
    ],
)
def test_dr3_loss_options(kw, done, expected_dot):
    loss, dot = L.dr3_loss(t(PHI), t(PHI_NEXT), None if done is None else t(done), **kw)
    assert dot.tolist() == pytest.approx(expected_dot, abs=1e-12)
    assert loss.item() == pytest.approx(sum(expected_dot) / 2, abs=1e-12)


def test_dr3_gradients_both_sides_and_detach_next():
    phi, phi_next = t(PHI, True), t(PHI_NEXT, True)
    loss, _ = L.dr3_loss(phi, phi_next)
    loss.backward()
    close(phi.grad, [[1.0, 0.25], [0.5, 2.0]])  # phi_next / B
    close(phi_next.grad, [[0.5, 1.0], [1.5, -0.5]])  # phi / B

    phi, phi_next = t(PHI, True), t(PHI_NEXT, True)
    loss, _ = L.dr3_loss(phi, phi_next, detach_next=True)
    loss.backward()
    assert phi_next.grad is None
    close(phi.grad, [[1.0, 0.25], [0.5, 2.0]])


def test_dr3_abs_gradient_sign():
    phi, phi_next = t(PHI, True), t(PHI_NEXT, True)
    L.dr3_loss(phi, phi_next, absolute=True)[0].backward()
    # second sample has dot -1: |.| flips its gradient sign
    close(phi.grad, [[1.0, 0.25], [-0.5, -2.0]])


def test_dr3_any_leading_shape_and_done_broadcast():
    # twin-head penultimate features (2, B, H) with done (B,)
    phi = t([PHI, [[0.0, 1.0], [1.0, 1.0]]])
    phi_next = t([PHI_NEXT, [[5.0, 2.0], [1.0, 1.0]]])  # dots: head0 [3, -1], head1 [2, 2]
    loss, dot = L.dr3_loss(phi, phi_next, t([1.0, 0.0]), mask_done=True)
    close(dot, [[0.0, -1.0], [0.0, 2.0]])
    assert loss.item() == pytest.approx(1.0 / 4)
    with pytest.raises(ValueError):
        L.dr3_loss(phi, phi_next, mask_done=True)


def test_dr3_zero_coefficient_contributes_exactly_zero_gradient():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    x, x_next = torch.randn(5, 4), torch.randn(5, 4)

    def grads(c0):
        w.grad = None
        phi, phi_next = torch.tanh(x @ w), torch.tanh(x_next @ w)
        td = (phi.sum(-1) - 1.0).pow(2).mean()
        loss = td if c0 is None else td + c0 * L.dr3_loss(phi, phi_next)[0]
        loss.backward()
        return w.grad.clone()

    assert torch.equal(grads(0.0), grads(None))
    assert not torch.equal(grads(0.1), grads(None))


# ---------------------------------------------------------------- actor / alpha

def test_sac_actor_loss_alpha_detached():
    alpha = t(0.5, True)
    logp, q = t([-1.0, 0.5], True), t([1.0, 2.0], True)
    loss = L.sac_actor_loss(q, logp, alpha)
    assert loss.item() == pytest.approx(((0.5 * -1.0 - 1.0) + (0.5 * 0.5 - 2.0)) / 2)  # -1.625
    loss.backward()
    assert alpha.grad is None
    assert logp.grad.tolist() == pytest.approx([0.25, 0.25])
    assert q.grad.tolist() == pytest.approx([-0.5, -0.5])


def test_bc_actor_loss():
    alpha = t(0.5, True)
    lp_data, logp = t([-2.0, 1.0], True), t([-1.0, 0.5], True)
    loss = L.bc_actor_loss(lp_data, logp, alpha)
    assert loss.item() == pytest.approx(((-0.5 + 2.0) + (0.25 - 1.0)) / 2)  # 0.375
    loss.backward()
    assert alpha.grad is None
    assert lp_data.grad.tolist() == pytest.approx([-0.5, -0.5])


def test_alpha_loss():
    log_alpha = t(0.3, True)
    logp = t([-1.0, 0.5], True)
    loss = L.alpha_loss(log_alpha, logp, target_entropy=-1.0)
    # -(0.3 * (-2) + 0.3 * (-0.5)) / 2 = 0.375; d/dlog_alpha = -((-2) + (-0.5)) / 2 = 1.25
    assert loss.item() == pytest.approx(0.375)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(1.25)
    assert logp.grad is None


# ---------------------------------------------------------------- KL toward the lagged policy

def test_gaussian_kl_by_hand_and_against_torch_distributions():
    # 1-D by hand: p = N(1, 2^2), q = N(0, 1): log(1/2) + (4 + 1) / 2 - 1/2 = 2 - log 2
    close(L.gaussian_kl(t([[1.0]]), t([[math.log(2.0)]]), t([[0.0]]), t([[0.0]])), [2.0 - math.log(2.0)])
    g = torch.Generator().manual_seed(0)
    mp, mq = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    lp, lq = 0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64), 0.5 * torch.randn(5, 3, generator=g,
                                                                                           dtype=torch.float64)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mp, lp.exp()),
                                             torch.distributions.Normal(mq, lq.exp())).sum(-1)
    torch.testing.assert_close(L.gaussian_kl(mp, lp, mq, lq), want, atol=1e-12, rtol=0)
    assert torch.equal(L.gaussian_kl(mp, lp, mp, lp), torch.zeros(5, dtype=torch.float64))  # KL(p || p) = 0
    # squashing both by tanh leaves the KL unchanged: a Monte Carlo estimate of E_p[log p(a) - log q(a)] on a = tanh(u)
    from torch.distributions import Normal, TanhTransform, TransformedDistribution

    P = TransformedDistribution(Normal(mp[0], lp[0].exp()), [TanhTransform(cache_size=1)])
    Q = TransformedDistribution(Normal(mq[0], lq[0].exp()), [TanhTransform(cache_size=1)])
    a = P.rsample((200_000,)).clamp(-1 + 1e-12, 1 - 1e-12)
    mc = (P.log_prob(a) - Q.log_prob(a)).sum(-1).mean()
    assert abs(mc.item() - L.gaussian_kl(mp[:1], lp[:1], mq[:1], lq[:1]).item()) < 0.05


def test_td_target_value_penalty_is_subtracted_from_v_only_where_it_bootstraps():
    base = L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.5, 1.0]), t([0.0, 1.0]), 0.9)
    y = L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.5, 1.0]), t([0.0, 1.0]), 0.9,
                    value_penalty=t([0.25, 7.0], True))
    # V = [1.0 - 0.25, (terminal)] -> [0.5 + 0.9 * 0.75, 1.0]
    assert y.tolist() == pytest.approx([0.5 + 0.9 * 0.75, 1.0], abs=1e-12) and not y.requires_grad
    assert torch.equal(L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.5, 1.0]), t([0.0, 1.0]), 0.9,
                                   value_penalty=None), base)
    with pytest.raises(ValueError, match="value_penalty"):
        L.td_target(t([1.0, 3.0]), t([2.0, 0.5]), t([0.5, 1.0]), t([0.0, 1.0]), 0.9, value_penalty=t([1.0]))


def test_awr_weights_by_hand_plain_and_batch_normalized():
    """``awr_actor_loss``: w = min(exp(A / beta), max) and, normalized, min(exp(A / beta) / mean exp(A / beta), max)
    (d3rlpy's AWAC form): numbers worked by hand; the weights are constants for the actor's gradient."""
    q = torch.tensor([[1.0], [0.5], [0.0], [0.2]])
    v = torch.tensor([[0.5], [0.5], [0.5], [0.2]])  # A = 0.5, 0, -0.5, 0
    logp = torch.tensor([[-1.0], [-2.0], [-3.0], [-4.0]], requires_grad=True)
    e = [math.exp(1.0), 1.0, math.exp(-1.0), 1.0]  # exp(A / 0.5)
    loss, w = L.awr_actor_loss(logp, q, v, beta=0.5, max_weight=2.0)
    assert w.flatten().tolist() == pytest.approx([2.0, 1.0, math.exp(-1.0), 1.0])  # e clipped at 2
    assert loss.item() == pytest.approx(-(2.0 * -1 + 1.0 * -2 + math.exp(-1.0) * -3 + 1.0 * -4) / 4)
    mean_e = sum(e) / 4
    loss_n, w_n = L.awr_actor_loss(logp, q, v, beta=0.5, max_weight=2.0, normalize=True)
    expected = [min(x / mean_e, 2.0) for x in e]  # e[0] / mean_e = 2.64..., clipped
    assert expected[0] == 2.0 and expected[1] == pytest.approx(1 / mean_e)
    assert w_n.flatten().tolist() == pytest.approx(expected)
    assert loss_n.item() == pytest.approx(-sum(x * y for x, y in zip(expected, [-1, -2, -3, -4])) / 4)
    loss_n.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-x / 4 for x in expected])
    # a shift of A by a constant changes nothing once normalized (only the ranking within the batch counts)
    assert L.awr_actor_loss(logp, q + 7.0, v, 0.5, 2.0, normalize=True)[1].flatten().tolist() == pytest.approx(
        w_n.flatten().tolist())
