"""The update's wiring, exactly: each expected value is recomputed here from the networks, the batch and a replay
of the update's random draws (small tensors, fixed seeds; penultimate activations read with forward hooks).

Random draws of one update, in order, from its generator (see ``compute_update``): the target's policy sample at
s' (B, A); with the max-Q backup N more (B, N, A); CQL's uniform (B, N, A), pi(s) and pi(s') noise (B, N, A) each;
the actor's sample (B, A).
"""

import copy
import dataclasses
import math

import pytest
import torch

from test_update import KEYS, A, B, D, H, P, make_batch, make_nets
from visual_dr3.learner.config import TrainConfig
from visual_dr3.learner.update import compute_update
from cli_helpers import set_fields

N = 3  # CQL's sampled actions per kind (small)


def config(**over) -> TrainConfig:
    cfg = TrainConfig()
    cfg.cql.num_actions = N
    return set_fields(cfg, **over)


def batch_with(discount=True, mc=False, seed=0):
    b = make_batch(seed)
    if discount:  # n-step batches: gamma^k per sample, each different and none the config's 0.99
        b.discount = torch.tensor([0.9, 0.5, 0.25, 0.99 ** 3, 0.1, 0.7])
    if mc:
        b.mc_return = torch.linspace(-1.0, 2.0, B)
    return b


def perturbed(module, scale=0.1, seed=5):
    """A copy of ``module`` with every parameter moved (so a target network differs from its online one)."""
    out = copy.deepcopy(module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def run(cfg, nets, batch, step=100, seed=1):
    return compute_update(nets, batch, cfg, step, generator=torch.Generator().manual_seed(seed))


def draws(cfg, seed=1, max_q=False):
    """The update's random draws, replayed from the same seed."""
    g = torch.Generator().manual_seed(seed)
    out = {"target": torch.randn((B, A), generator=g)}
    if max_q:
        out["max_q"] = torch.randn((B, cfg.cql.num_actions, A), generator=g)
    out["uniform"] = torch.rand((B, N, A), generator=g) * 2 - 1
    out["pi"] = torch.randn((B, N, A), generator=g)
    out["pi_next"] = torch.randn((B, N, A), generator=g)
    out["actor"] = torch.randn((B, A), generator=g)
    return out


def features(nets, batch):
    obs_all = {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}
    phi_all = nets.encoder(obs_all)
    return phi_all[:B], phi_all[B:]


def policy(actor, phi, eps):
    """tanh-Gaussian sample from noise ``eps`` and its log-density (torch.distributions, log(1 - a^2))."""
    mean, log_std = actor(phi)
    if eps.dim() == 3:
        mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
    u = mean + log_std.exp() * eps
    a = torch.tanh(u)
    logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log1p(-a.pow(2)).sum(-1)
    return a, logp


def penultimate(q, phi, action):
    """Both heads' last hidden activations, read by forward hooks on their last ReLU: (2, B, hidden)."""
    seen = []
    hooks = [head["body"][-1].register_forward_hook(lambda m, i, o: seen.append(o.clone())) for head in q.heads]
    try:
        q(phi, action)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen)


def critic_params(nets):
    return list(nets.encoder.parameters()) + list(nets.q.parameters())


def grads(loss, params):
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def td_loss(nets, phi, batch, y):
    q1, q2 = nets.q(phi, batch.action)
    return (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()


@pytest.mark.parametrize("backup, target_action", [("sarsa", "sample"), ("td", "sample"), ("td", "mean")])
def test_penultimate_dr3_reads_the_backups_a_prime_done_masked(backup, target_action):
    c0 = 0.3
    cfg = config(**{"algo.backup": backup, "algo.target_action": target_action, "dr3.features": "penultimate",
                    "dr3.coef": c0})
    batch = batch_with()
    nets = make_nets(cfg)
    out = run(cfg, nets, batch)
    cfg0 = copy.deepcopy(cfg)
    cfg0.dr3.coef = 0.0
    out0 = run(cfg0, nets, batch)

    phi, phi_next = features(nets, batch)
    with torch.no_grad():
        a_pi, _ = policy(nets.actor, phi_next, draws(cfg)["target"])
        a_mean = torch.tanh(nets.actor(phi_next)[0])
    a_prime = {"sarsa": batch.next_action, "td": a_pi if target_action == "sample" else a_mean}[backup]
    h, h_next = penultimate(nets.q, phi, batch.action), penultimate(nets.q, phi_next, a_prime)
    dot = (h * h_next).sum(-1)  # (2, B)
    expected = (dot * (1 - batch.done)).mean()
    torch.testing.assert_close(out.metrics["dr3_loss"], c0 * expected.detach(), rtol=1e-5, atol=1e-6)
    # the critic's gradient gains exactly c0 times the term's, through both sides
    for g1, g0, gd in zip(grads(out.parts["critic"], critic_params(nets)), grads(out0.parts["critic"],
                                                                             critic_params(nets)),
                          grads(expected, critic_params(nets))):
        torch.testing.assert_close(g1 - g0, c0 * gd, rtol=1e-4, atol=2e-6)
    # the test tells the choices apart: another a', or no mask, gives another value
    assert dot[:, -1].abs().sum() > 1e-3 and batch.done[-1] == 1
    assert not torch.isclose(dot.mean(), expected)
    others = [a for a in (batch.next_action, a_pi, a_mean) if a is not a_prime]
    for a in others:
        other = ((h * penultimate(nets.q, phi_next, a)).sum(-1) * (1 - batch.done)).mean()
        assert not torch.isclose(other, expected, rtol=1e-4)


@pytest.mark.parametrize("target_action", ["sample", "mean"])
def test_td_target_with_per_sample_gamma_k_and_the_target_action(target_action):
    cfg = config(**{"algo.backup": "td", "algo.target_action": target_action})
    batch = batch_with()
    nets = dataclasses.replace(make_nets(cfg), q_target=perturbed(make_nets(cfg).q).requires_grad_(False))
    out = run(cfg, nets, batch)
    phi, phi_next = features(nets, batch)
    with torch.no_grad():
        a_next = (policy(nets.actor, phi_next, draws(cfg)["target"])[0] if target_action == "sample"
                  else torch.tanh(nets.actor(phi_next)[0]))
        v = torch.min(*nets.q_target(phi_next, a_next))
    y = batch.reward + batch.discount * (1 - batch.done) * v
    torch.testing.assert_close(out.metrics["target_q"], y.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.metrics["td_loss"], td_loss(nets, phi, batch, y).detach(), rtol=1e-5, atol=1e-6)
    # the config's gamma would give another target: the batch's gamma^k is what the update uses
    y_cfg = batch.reward + cfg.algo.discount * (1 - batch.done) * v
    assert not torch.isclose(y_cfg.mean(), y.mean())
    batch.discount = None  # one-step batches: the config's gamma
    torch.testing.assert_close(run(cfg, nets, batch).metrics["target_q"], y_cfg.mean(), rtol=1e-6, atol=1e-6)


def test_max_q_backup_takes_the_max_over_policy_samples_of_the_twin_minimum():
    cfg = config(**{"algo.backup": "td", "cql.max_q_backup": True, "cql.num_actions": 4})
    batch = batch_with()
    nets = dataclasses.replace(make_nets(cfg), q_target=perturbed(make_nets(cfg).q).requires_grad_(False))
    out = run(cfg, nets, batch)
    phi, phi_next = features(nets, batch)
    with torch.no_grad():
        a_n, _ = policy(nets.actor, phi_next, draws(cfg, max_q=True)["max_q"])  # (B, 4, A)
        q_min = torch.min(*nets.q_target(phi_next, a_n))  # (B, 4)
    y = batch.reward + batch.discount * (1 - batch.done) * q_min.max(1).values
    torch.testing.assert_close(out.metrics["target_q"], y.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.metrics["td_loss"], td_loss(nets, phi, batch, y).detach(), rtol=1e-5, atol=1e-6)
    # not the mean, nor the max per head then the min (the reference's variant): the samples' ranks differ
    assert not torch.isclose(y.mean(), (batch.reward + batch.discount * (1 - batch.done) * q_min.mean(1)).mean())


def cql_gaps(nets, cfg, batch, phi, phi_next, d):
    """Per head, the CQL(H) gap logsumexp_j(importance-weighted Q) - Q(s, a_data), (2, B)."""
    a_p, logp_p = policy(nets.actor, phi.detach(), d["pi"])
    a_n, logp_n = policy(nets.actor, phi_next.detach(), d["pi_next"])
    q_data = torch.stack(nets.q(phi, batch.action))
    q_r, q_p, q_n = (torch.stack(nets.q(phi, a)) for a in (d["uniform"], a_p, a_n))
    cat = torch.cat([q_r - A * math.log(0.5), q_p - logp_p.detach(), q_n - logp_n.detach()], dim=2)  # (2, B, 3N)
    return torch.logsumexp(cat, dim=2) - q_data


@pytest.mark.parametrize("gap_floor", [None, "median"])
def test_cql_lagrange_term_and_gap_floor_exact(gap_floor):
    w, target_gap, alpha_prime = 1.5, 2.0, 0.7
    cfg = config(**{"cql.lagrange": True, "cql.min_q_weight": w, "cql.target_gap": target_gap, "dr3.coef": 0.0})
    batch = batch_with()
    nets = make_nets(cfg)
    with torch.no_grad():
        nets.log_alpha_prime.fill_(math.log(alpha_prime))
    phi, phi_next = features(nets, batch)
    gaps = cql_gaps(nets, cfg, batch, phi, phi_next, draws(cfg))
    if gap_floor == "median":
        cfg.cql.gap_floor = gaps.detach().median().item()
    floored = gaps if cfg.cql.gap_floor is None else gaps.clamp(min=cfg.cql.gap_floor)
    out = run(cfg, nets, batch)
    pen = w * floored.mean(1)  # per head
    torch.testing.assert_close(out.metrics["alpha_prime"], torch.tensor(alpha_prime), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.metrics["cql_gap"], gaps.mean().detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["cql_loss"], (alpha_prime * (pen.sum() - 2 * target_gap)).detach(),
                               rtol=1e-5, atol=1e-5)
    lagrange = -alpha_prime * (w * floored.detach().mean() - target_gap)
    torch.testing.assert_close(out.parts["lagrange"], lagrange, rtol=1e-5, atol=1e-6)
    # d/d log alpha' of alpha' * c is alpha' * c: the multiplier's gradient is the loss itself
    (g,) = torch.autograd.grad(out.total, [nets.log_alpha_prime], retain_graph=True)
    torch.testing.assert_close(g, lagrange, rtol=1e-5, atol=1e-6)
    # the critic loss is TD + alpha' * (the floored penalties - 2 target_gap), gradients included
    critic = td_loss(nets, phi, batch, _target(nets, cfg, batch, phi_next)) + alpha_prime * (pen.sum() - 2 * target_gap)
    torch.testing.assert_close(out.parts["critic"], critic, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(out.parts["critic"], critic_params(nets)), grads(critic, critic_params(nets))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6)
    if gap_floor is not None:  # the floor changes the penalty and leaves samples below it without gradient
        assert (gaps < cfg.cql.gap_floor).any() and not torch.isclose(floored.mean(), gaps.mean())


def _target(nets, cfg, batch, phi_next):
    """The td backup's target with the replayed policy sample (for the gradient comparison)."""
    with torch.no_grad():
        a, _ = policy(nets.actor, phi_next, draws(cfg)["target"])
        return batch.reward + batch.discount * (1 - batch.done) * torch.min(*nets.q_target(phi_next, a))


def test_sac_actor_and_temperature_losses_after_the_warmup_exact():
    cfg = config(**{"algo.bc_warmup_steps": 5})
    batch = batch_with()
    nets = make_nets(cfg)
    with torch.no_grad():
        nets.log_alpha.fill_(math.log(0.3))
    phi, _ = features(nets, batch)
    a_pi, logp = policy(nets.actor, phi.detach(), draws(cfg)["actor"])
    expected = (0.3 * logp - torch.min(*nets.q(phi.detach(), a_pi))).mean()
    out = run(cfg, nets, batch, step=5)  # the first step after the warm-up
    torch.testing.assert_close(out.parts["actor"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["entropy"], -logp.mean().detach(), rtol=1e-5, atol=1e-5)
    actor = list(nets.actor.parameters())
    for a, b in zip(grads(out.total, actor), grads(expected, actor)):  # the actor's gradient is SAC's alone
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    alpha_loss = -(nets.log_alpha * (logp.detach() - A)).mean()  # target entropy -A
    torch.testing.assert_close(out.parts["alpha"], alpha_loss, rtol=1e-5, atol=1e-6)
    # the last warm-up step is imitation, not SAC
    warm = run(cfg, nets, batch, step=4)
    torch.testing.assert_close(warm.parts["actor"], (0.3 * logp - nets.actor.log_prob(phi, batch.action)).mean(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bc_loss,normalize", [("mse", False), ("nll", False), ("mse", True)])
def test_awr_actor_after_the_warmup_exact(bc_loss, normalize):
    """The TD recipe's actor (``algo.actor_objective awr``): after the warm-up, the data's action imitated with the
    weight min(exp((min_i Q_i(s, a_data) - min_i Q_i(s, pi's mean)) / beta), max_weight); the weights are constants,
    so the actor's gradient is the weighted imitation's, and the critic's loss is the SAC run's, exactly."""
    over = {"algo.bc_warmup_steps": 5, "algo.awr_beta": 0.5, "algo.awr_max_weight": 1.5, "algo.bc_loss": bc_loss}
    cfg = config(**over, **{"algo.actor_objective": "awr", "algo.awr_normalize": normalize})
    batch = batch_with()
    nets = make_nets(cfg)
    nets = dataclasses.replace(nets, q=perturbed(nets.q, 0.3, seed=1))  # heads that cross: the min picks each
    phi, _ = features(nets, batch)
    with torch.no_grad():
        (q1, q2), (m1, m2) = nets.q(phi, batch.action), nets.q(phi, nets.actor.mode(phi))
        assert 0 < (q1 < q2).sum() < B and 0 < (m1 < m2).sum() < B
        adv = torch.min(q1, q2) - torch.min(m1, m2)
        w = torch.exp(adv / 0.5)
        w = (w / w.mean() if normalize else w).clamp(max=1.5)  # normalized: the batch's mean weight is 1
    score = (nets.actor.log_prob(phi.detach(), batch.action) if bc_loss == "nll"
             else -(nets.actor.mode(phi.detach()) - batch.action).pow(2).sum(-1))
    expected = -(w * score).mean()
    assert w.min() < 1.5 and w.max() > w.min()  # the weights differ across the batch: the test can tell them apart
    out = run(cfg, nets, batch, step=5)
    torch.testing.assert_close(out.parts["actor"], expected, rtol=1e-5, atol=1e-6)
    actor = list(nets.actor.parameters())
    for a, b in zip(grads(out.total, actor), grads(expected, actor)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    sac = run(config(**over), nets, batch, step=5)
    torch.testing.assert_close(out.parts["critic"], sac.parts["critic"], rtol=0, atol=0)
    assert not torch.allclose(out.parts["actor"], sac.parts["actor"])
    # unweighted imitation in the warm-up (the same for both objectives)
    warm = run(cfg, nets, batch, step=4)
    torch.testing.assert_close(warm.parts["actor"], run(config(**over), nets, batch, step=4).parts["actor"])


def test_target_encoder_feeds_the_target_and_takes_no_gradient():
    cfg = config(**{"algo.backup": "sarsa", "algo.target_encoder": True})
    batch = batch_with()
    base = make_nets(cfg)
    enc_t = perturbed(base.encoder, scale=0.05).requires_grad_(False)
    nets = dataclasses.replace(base, encoder_target=enc_t)
    out = run(cfg, nets, batch)
    phi, phi_next = features(nets, batch)
    with torch.no_grad():
        v = torch.min(*nets.q_target(enc_t(batch.next_obs), batch.next_action))
        v_online = torch.min(*nets.q_target(phi_next, batch.next_action))
    y = batch.reward + batch.discount * (1 - batch.done) * v
    torch.testing.assert_close(out.metrics["target_q"], y.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.metrics["td_loss"], td_loss(nets, phi, batch, y).detach(), rtol=1e-5, atol=1e-6)
    y_online = batch.reward + batch.discount * (1 - batch.done) * v_online
    assert not torch.isclose(y_online.mean(), y.mean())
    torch.testing.assert_close(run(cfg, base, batch).metrics["target_q"], y_online.mean(), rtol=1e-6, atol=1e-6)
    out.total.backward()
    assert all(p.grad is None for p in enc_t.parameters())
    assert any(p.grad is not None for p in nets.encoder.parameters())


def test_q_on_data_against_the_monte_carlo_return_is_logged_and_changes_nothing_else():
    cfg = config()
    nets = make_nets(cfg)
    with_mc, without = batch_with(mc=True), batch_with(mc=False)
    out, plain = run(cfg, nets, with_mc), run(cfg, nets, without)
    phi, _ = features(nets, with_mc)
    with torch.no_grad():
        q1, q2 = nets.q(phi, with_mc.action)
        q = 0.5 * (q1 + q2)
    torch.testing.assert_close(out.metrics["q_data"], q.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.metrics["mc_return"], with_mc.mc_return.mean(), rtol=0, atol=0)
    torch.testing.assert_close(out.metrics["q_minus_mc"], (q - with_mc.mc_return).mean(), rtol=1e-5, atol=1e-6)
    assert not {"q_data", "mc_return", "q_minus_mc"} & set(plain.metrics)
    for k in plain.parts:
        assert torch.equal(out.parts[k], plain.parts[k]), k
    assert all(not v.requires_grad for v in out.metrics.values())
