"""The whole update (update.py): DR3 on/off gradients, SARSA vs TD targets, gradient separation."""

import copy
import dataclasses

import pytest
import torch

from visual_dr3.data.replay import Batch
from visual_dr3.learner import losses as L
from visual_dr3.learner.config import TrainConfig
from visual_dr3.learner.encoders import make_encoder
from visual_dr3.learner.networks import QHeads, TanhGaussianActor
from visual_dr3.learner.update import Nets, compute_update

B, A, H, P, D = 6, 7, 16, 5, 32
KEYS = ["agentview_image", "robot0_eye_in_hand_image"]


def make_batch(seed=0, done_last=True) -> Batch:
    g = torch.Generator().manual_seed(seed)

    def obs():
        d = {k: torch.randint(0, 256, (B, 3, H, H), generator=g, dtype=torch.uint8) for k in KEYS}
        d["proprio"] = torch.randn(B, P, generator=g)
        return d

    done = torch.zeros(B)
    if done_last:
        done[-1] = 1.0
    return Batch(obs=obs(), next_obs=obs(), action=torch.rand(B, A, generator=g) * 2 - 1,
                 reward=torch.randint(0, 2, (B,), generator=g).float(), done=done,
                 next_action=torch.rand(B, A, generator=g) * 2 - 1, source=torch.zeros(B, dtype=torch.long))


def make_nets(cfg: TrainConfig, seed=0) -> Nets:
    torch.manual_seed(seed)
    enc = make_encoder("drq", KEYS, H, P, D)
    q = QHeads(D, A, hidden=(32, 32))
    actor = TanhGaussianActor(D, A, hidden=(32, 32))
    lap = torch.nn.Parameter(torch.zeros(())) if cfg.cql.lagrange else None
    return Nets(enc, q, copy.deepcopy(q).requires_grad_(False), actor, None,
                torch.nn.Parameter(torch.zeros(())), lap)


def critic_grads(nets: Nets, loss: torch.Tensor) -> list[torch.Tensor]:
    params = list(nets.encoder.parameters()) + list(nets.q.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def run(cfg, nets, batch, seed=1, step=100):
    return compute_update(nets, batch, cfg, step, generator=torch.Generator().manual_seed(seed))


def test_dr3_off_is_exactly_plain_cql_and_on_adds_exactly_c0_times_dr3_gradient():
    batch = make_batch()
    cfg0 = TrainConfig()
    cfg0.dr3.coef = 0.0
    nets = make_nets(cfg0)
    out0 = run(cfg0, nets, batch)
    assert out0.metrics["dr3_loss"].item() == 0.0
    g0 = critic_grads(nets, out0.parts["critic"])

    # With DR3 off the critic loss is TD + CQL and nothing else.
    torch.testing.assert_close(out0.parts["critic"].detach(), out0.metrics["td_loss"] + out0.metrics["cql_loss"])

    c0 = 0.37
    cfg1 = copy.deepcopy(cfg0)
    cfg1.dr3.coef = c0
    cfg1.dr3.mask_done = True
    out1 = run(cfg1, nets, batch)
    g1 = critic_grads(nets, out1.parts["critic"])
    # Independent DR3 gradient: encoder on [s; s'], masked signed dot, both sides.
    obs_all = {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}
    phi_all = nets.encoder(obs_all)
    dr3, _ = L.dr3_loss(phi_all[:B], phi_all[B:], batch.done, mask_done=True)
    g_dr3 = critic_grads(nets, dr3)
    for a, b, c in zip(g0, g1, g_dr3):
        torch.testing.assert_close(b - a, c0 * c, atol=2e-6, rtol=1e-4)
    assert any(c.abs().sum() > 0 for c in g_dr3)
    assert out1.metrics["dr3_loss"].item() == pytest.approx(c0 * dr3.item(), rel=1e-5)


def test_sarsa_target_uses_dataset_next_action_and_td_does_not():
    batch = make_batch()
    cfg = TrainConfig()
    cfg.algo.backup = "sarsa"
    nets = make_nets(cfg)
    out = run(cfg, nets, batch)
    with torch.no_grad():
        obs_all = {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}
        phi_next = nets.encoder(obs_all)[B:]
        t1, t2 = nets.q_target(phi_next, batch.next_action)
        expected = batch.reward + 0.99 * (1 - batch.done) * torch.min(t1, t2)
    torch.testing.assert_close(out.metrics["target_q"], expected.mean())

    cfg_td = TrainConfig()
    out_td = run(cfg_td, nets, batch)
    other = make_batch()
    other.next_action = -batch.next_action
    out_td2 = run(cfg_td, nets, other)
    # TD ignores the dataset's a' (same generator -> same policy samples -> same target).
    torch.testing.assert_close(out_td.metrics["target_q"], out_td2.metrics["target_q"])
    out_sarsa2 = run(cfg, nets, other)
    assert not torch.allclose(out.metrics["target_q"], out_sarsa2.metrics["target_q"])


def test_actor_loss_does_not_reach_critic_and_critic_loss_does_not_reach_actor():
    batch = make_batch()
    cfg = TrainConfig()
    cfg.dr3.features = "both"
    nets = make_nets(cfg)
    out = run(cfg, nets, batch)
    crit = list(nets.encoder.parameters()) + list(nets.q.parameters())
    g_total = torch.autograd.grad(out.total, crit + list(nets.actor.parameters()), allow_unused=True,
                                  retain_graph=True)
    g_crit = torch.autograd.grad(out.parts["critic"], crit, allow_unused=True, retain_graph=True)
    for a, b in zip(g_total[:len(crit)], g_crit):
        torch.testing.assert_close(a, b)
    g_actor = torch.autograd.grad(out.parts["actor"], list(nets.actor.parameters()), retain_graph=True)
    for a, b in zip(g_total[len(crit):], g_actor):
        torch.testing.assert_close(a, b)
    assert all(g is None for g in torch.autograd.grad(out.parts["critic"], list(nets.actor.parameters()),
                                                        allow_unused=True, retain_graph=True))


@pytest.mark.parametrize("bc_loss", ["nll", "mse"])
def test_bc_warmup_is_exactly_imitation_until_its_last_step_then_sac(bc_loss):
    batch = make_batch()
    cfg = TrainConfig()
    cfg.algo.bc_warmup_steps = 10
    cfg.algo.bc_loss = bc_loss
    nets = make_nets(cfg)
    with torch.no_grad(), torch.random.fork_rng():
        obs_all = {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}
        phi = nets.encoder(obs_all)[:B]
        score = (nets.actor.log_prob(phi, batch.action) if bc_loss == "nll"
                 else -(nets.actor.mode(phi) - batch.action).pow(2).sum(-1))
    alpha = nets.log_alpha.exp().item()
    for step in (0, 9):  # warm-up: mean(alpha * log pi(a_pi|s)) - mean(score of the data action), exactly
        out = run(cfg, nets, batch, step=step)
        want = alpha * -out.metrics["entropy"] - score.mean()
        torch.testing.assert_close(out.parts["actor"], want, rtol=1e-6, atol=1e-6)
    # step 10: SAC; the same sampled action (same generator) with bc_weight w adds exactly -w * mean(score)
    sac = run(cfg, nets, batch, step=10)
    assert not torch.allclose(sac.parts["actor"], alpha * -sac.metrics["entropy"] - score.mean())
    cfg_w = copy.deepcopy(cfg)
    cfg_w.algo.bc_weight = 2.5
    with_bc = run(cfg_w, nets, batch, step=10)
    torch.testing.assert_close(with_bc.parts["actor"] - sac.parts["actor"], -2.5 * score.mean(), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(with_bc.parts["critic"], sac.parts["critic"], rtol=0, atol=0)


@pytest.mark.parametrize("bc_loss", ["mse", "nll"])
def test_separate_bc_actor_encoder_takes_only_the_imitation_gradient(bc_loss):
    from visual_dr3.learner.update import imitation_score

    batch = make_batch()
    cfg = TrainConfig()
    cfg.algo.bc_warmup_steps, cfg.algo.bc_loss, cfg.algo.bc_weight = 10, bc_loss, 0.7
    torch.manual_seed(1)
    nets = dataclasses.replace(make_nets(cfg), actor_encoder=make_encoder("drq", KEYS, H, P, D))
    enc = list(nets.actor_encoder.parameters())

    def enc_grads(loss):
        grads = torch.autograd.grad(loss, enc, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(enc, grads)]

    phi = nets.actor_encoder({k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs})[:B]
    for step, weight in ((3, 1.0), (10, cfg.algo.bc_weight)):  # in the warm-up, then SAC + BC term
        cfg.model.actor_encoder = "separate_bc"
        out = run(cfg, nets, batch, step=step)
        # the actor encoder's gradient is exactly the imitation term's: the Q and entropy terms reach the head only
        expect = enc_grads(-weight * imitation_score(nets.actor, phi, batch.action, bc_loss).mean())
        for g, e in zip(enc_grads(out.parts["actor"]), expect):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)
        assert any(e.abs().sum() > 0 for e in expect)
        head = torch.autograd.grad(out.parts["actor"], list(nets.actor.parameters()), retain_graph=True)
        cfg.model.actor_encoder = "separate"  # the same step with the Q gradient let through differs
        out_sep = run(cfg, nets, batch, step=step)
        torch.testing.assert_close(out_sep.parts["actor"], out.parts["actor"])  # same loss value
        diff = [(g - e).abs().max() for g, e in zip(enc_grads(out_sep.parts["actor"]), expect)]
        assert max(diff) > 1e-6
        assert all(torch.isfinite(h).all() for h in head)


@pytest.mark.parametrize("features", ["encoder", "penultimate", "both"])
@pytest.mark.parametrize("backup", ["td", "sarsa"])
def test_every_dr3_option_runs_and_is_finite(features, backup):
    batch = make_batch()
    cfg = TrainConfig()
    cfg.dr3.features, cfg.algo.backup = features, backup
    cfg.dr3.absolute, cfg.dr3.detach_next = True, True
    cfg.cql.lagrange, cfg.cql.max_q_backup = True, backup == "td"
    nets = make_nets(cfg)
    out = run(cfg, nets, batch)
    out.total.backward()
    assert torch.isfinite(out.total)
    assert out.metrics["dr3_loss"] >= 0  # absolute
    assert nets.log_alpha_prime.grad is not None


def test_kl_to_the_lagged_policy_enters_actor_loss_and_backup_exactly():
    batch = make_batch()
    cfg = TrainConfig()
    cfg.algo.bc_warmup_steps = 10
    nets = make_nets(cfg)
    lagged = copy.deepcopy(nets.actor).requires_grad_(False)
    with torch.no_grad():
        for p in lagged.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    nets_kl = dataclasses.replace(nets, kl_actor=lagged)
    cfg_kl = copy.deepcopy(cfg)
    cfg_kl.kl.coef = 0.3
    with torch.no_grad():
        obs_all = {k: torch.cat([batch.obs[k], batch.next_obs[k]]) for k in batch.obs}
        phi = nets.encoder(obs_all)  # the actor reads the critic's features (shared)
        kl_all = L.gaussian_kl(*nets.actor(phi), *lagged(phi))
    kl_s, kl_next = kl_all[:B], kl_all[B:]
    assert (kl_s > 0).all()
    # off: a lagged policy present but coef 0 changes nothing, bit for bit
    plain, off = run(cfg, nets, batch), run(cfg, nets_kl, batch)
    for k in plain.parts:
        assert torch.equal(plain.parts[k], off.parts[k]), k
    assert "kl_policy" not in off.metrics
    on = run(cfg_kl, nets_kl, batch)
    torch.testing.assert_close(on.parts["actor"] - plain.parts["actor"], 0.3 * kl_s.mean(), rtol=1e-5, atol=1e-6)
    # the backup: V(s') - 0.3 * KL(s'), bootstrapped where not done
    want_shift = (cfg.algo.discount * (1 - batch.done) * 0.3 * kl_next).mean()
    torch.testing.assert_close(plain.metrics["target_q"] - on.metrics["target_q"], want_shift, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(on.metrics["kl_policy"], kl_s.mean(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(on.metrics["kl_backup"], 0.3 * kl_next.mean(), rtol=1e-6, atol=1e-7)
    # during the BC warm-up only the backup is regularized
    warm_plain, warm_on = run(cfg, nets, batch, step=3), run(cfg_kl, nets_kl, batch, step=3)
    assert torch.equal(warm_plain.parts["actor"], warm_on.parts["actor"])
    assert not torch.equal(warm_plain.parts["critic"], warm_on.parts["critic"])
    # the KL's gradient reaches the actor, never its lagged copy
    torch.autograd.grad(on.parts["actor"], list(nets.actor.parameters()))
    assert all(p.grad is None and not p.requires_grad for p in lagged.parameters())
