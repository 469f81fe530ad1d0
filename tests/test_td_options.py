"""The TD options of issue 34 around the update: the module's Polyak steps (target heads, target encoder, KL
actor), the multipliers' learning rates, checkpoints of a target encoder, reward scale/bias and the data's
discounted return to go at load time, and the flags' validation."""

import copy
import math

import numpy as np
import pytest
import torch

from h5fixtures import CAMERAS, PROPRIO, decode_images, reward_of, write_file
from visual_dr3.app.cli_args import parse_train_args
from visual_dr3.checkpoint import check_resume_compatible
from visual_dr3.data.nstep import return_to_go
from visual_dr3.data.replay import Batch, load_replay
from visual_dr3.errors import UserError
from visual_dr3.learner.config import TrainConfig, to_dict
from visual_dr3.learner.datamodule import ReplayDataModule
from visual_dr3.learner.module import DR3CQL
from cli_helpers import set_fields

CAMS, PROP = list(CAMERAS), list(PROPRIO)
S, ACT, BS = 16, 4, 5  # image size, action dims, batch


def small_cfg(**over) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.channels, cfg.model.num_layers = 16, [16, 16], 8, 2
    cfg.cql.num_actions = 2
    return set_fields(cfg, **over)


def module_of(cfg) -> DR3CQL:
    torch.manual_seed(0)
    return DR3CQL(to_dict(cfg), CAMS, PROP, 5, S, ACT)


def tiny_batch(seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)

    def obs():
        d = {k: torch.randint(0, 256, (BS, 3, S, S), generator=g, dtype=torch.uint8) for k in CAMS}
        d["proprio"] = torch.randn(BS, 5, generator=g)
        return d

    return Batch(obs=obs(), next_obs=obs(), action=torch.rand(BS, ACT, generator=g) * 2 - 1,
                 reward=torch.rand(BS, generator=g), done=torch.zeros(BS),
                 next_action=torch.rand(BS, ACT, generator=g) * 2 - 1, source=torch.zeros(BS, dtype=torch.long),
                 discount=torch.full((BS,), 0.9), mc_return=torch.rand(BS, generator=g))


def one_step(module, step=0):
    opt = module.configure_optimizers()
    gen = torch.Generator().manual_seed(3)
    out, _ = module.backward_step(tiny_batch(), step, opt, gen, lambda loss: loss.backward())
    module.optimizer_step(opt, step)
    return out, opt


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_polyak_steps_of_target_heads_target_encoder_and_kl_actor():
    tau, kl_tau = 0.2, 0.3
    m = module_of(small_cfg(**{"algo.target_encoder": True, "algo.tau": tau, "kl.coef": 0.1, "kl.tau": kl_tau,
                               "algo.bc_warmup_steps": 0}))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # targets apart from their online networks, so each lerp is visible
        for t in (m.q_target, m.encoder_target, m.kl_actor):
            for p in t.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    pairs = [(m.q_target, m.q, tau), (m.encoder_target, m.encoder, tau), (m.kl_actor, m.actor, kl_tau)]
    before = [params(t) for t, _, _ in pairs]
    online_before = [params(o) for _, o, _ in pairs]
    one_step(m)
    for (t, o, r), old, o_old in zip(pairs, before, online_before):
        assert all(p.grad is None for p in t.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(params(o), o_old))  # the online network moved
        for new, prev, online in zip(params(t), old, params(o)):
            torch.testing.assert_close(new, prev + r * (online - prev), rtol=1e-6, atol=1e-7)
    # the proprio statistics (buffers) of the target encoder are the encoder's, untouched by the averaging
    for (name, b), (_, b_t) in zip(m.encoder.named_buffers(), m.encoder_target.named_buffers()):
        assert torch.equal(b, b_t), name


def test_without_target_encoder_there_is_none():
    m = module_of(small_cfg())
    assert m.encoder_target is None and m.nets().encoder_target is None
    assert not any(k.startswith("encoder_target.") for k in m.state_dict())


@pytest.mark.parametrize("lagrange_lr", [None, 0.05])
def test_multipliers_learning_rates_and_first_adam_step(lagrange_lr):
    cfg = small_cfg(**{"cql.lagrange": True, "cql.lagrange_lr": lagrange_lr, "cql.init_alpha_prime": 2.0,
                       "algo.alpha_lr": 0.02, "algo.init_alpha": 0.5})
    m = module_of(cfg)
    assert m.log_alpha_prime.item() == pytest.approx(math.log(2.0))
    lrs = {g["name"]: g["lr"] for g in m.configure_optimizers().param_groups}
    assert lrs["alpha"] == 0.02 and lrs["alpha_prime"] == (cfg.algo.critic_lr if lagrange_lr is None else 0.05)
    la, lap = m.log_alpha.item(), m.log_alpha_prime.item()
    one_step(m)
    # Adam's first step moves each log-multiplier by its learning rate (|m / sqrt(v)| = 1)
    assert abs(m.log_alpha.item() - la) == pytest.approx(0.02, rel=1e-3)
    assert abs(m.log_alpha_prime.item() - lap) == pytest.approx(lrs["alpha_prime"], rel=1e-3)


def test_target_encoder_checkpoint_round_trip_and_resume_check(tmp_path):
    cfg = small_cfg(**{"algo.target_encoder": True})
    m = module_of(cfg)
    one_step(m)
    again = DR3CQL(**copy.deepcopy(dict(m.hparams)))  # how checkpoint.load_policy rebuilds it
    again.load_state_dict(m.state_dict())  # strict: the target encoder's weights are in the state dict
    for a, b in zip(m.encoder_target.parameters(), again.encoder_target.parameters()):
        assert torch.equal(a, b)
    obs = {k: v[:2] for k, v in tiny_batch().obs.items()}
    assert torch.equal(m.act(obs), again.act(obs))  # acting does not read the target encoder

    def ckpt(config: dict):
        path = tmp_path / "c.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": {}, "global_step": 7,
                    "visual_dr3": {"config": config, "image_keys": CAMS, "proprio_keys": PROP, "image_size": S,
                                   "action_dim": ACT, "env_args": {}}}, path)
        return path

    with pytest.raises(UserError, match="algo.target_encoder: checkpoint True, now False"):
        check_resume_compatible(ckpt(to_dict(cfg)), small_cfg(), S)
    old = to_dict(small_cfg())
    del old["algo"]["target_encoder"]  # a checkpoint from before the flag: no target encoder
    assert check_resume_compatible(ckpt(old), small_cfg(**{"algo.reward_scale": 4.0}), S) == 7


def loop_return_to_go(reward, done, obs_index, next_index, gamma):
    out, g = np.zeros(len(reward)), 0.0
    for t in reversed(range(len(reward))):
        cont = t + 1 < len(reward) and obs_index[t + 1] == next_index[t] and done[t] == 0
        g = reward[t] + (gamma * g if cont else 0.0)
        out[t] = g
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99])
def test_return_to_go_stops_at_demo_ends_and_terminals(gamma):
    rng = np.random.default_rng(0)
    obs_index, next_index, done = [], [], []
    f = 0
    for length in [1, 2, 7, 300, 1500, 4]:  # demos stored one after another, one extra frame each
        obs_index += range(f, f + length)
        next_index += range(f + 1, f + length + 1)
        d = np.zeros(length)
        d[-1] = length % 2
        if length > 5:
            d[3] = 1.0  # a terminal inside a demo
        done += list(d)
        f += length + 1
    obs_index, next_index, done = np.array(obs_index), np.array(next_index), np.array(done, np.float32)
    reward = rng.normal(size=len(done)).astype(np.float32)
    got = return_to_go(reward, done, obs_index, next_index, gamma)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, loop_return_to_go(reward, done, obs_index, next_index, gamma), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(return_to_go(reward[:0], done[:0], obs_index[:0], next_index[:0], gamma),
                                  np.zeros(0, np.float32))


@pytest.mark.parametrize("next_obs", [True, False])
def test_reward_scale_bias_in_n_step_rewards_and_returns_to_go(tmp_path, next_obs):
    lengths, succ, n, gamma, scale, bias = (5, 3, 4), (True, False, True), 3, 0.5, 0.004, -2.0
    path = write_file(tmp_path / "a.hdf5", lengths, succ, next_obs=next_obs)
    rb = load_replay(str(path), CAMS, PROP, n_step=n, discount=gamma, reward_scale=scale, reward_bias=bias,
                     progress=False)
    b = rb.gather(rb._src_table)
    dt = decode_images(b.obs[CAMS[0]].numpy())
    r = lambda i, t: scale * reward_of(i, t) + bias  # noqa: E731
    for j, (i, s) in enumerate(dt[:, :2].tolist()):
        T = lengths[i]
        last = T - 1 if (next_obs or succ[i]) else T - 2
        k = min(n, last - s + 1)
        assert b.reward[j].item() == pytest.approx(sum(gamma ** m * r(i, s + m) for m in range(k)), rel=1e-6)
        # the return to go runs to the demo's end (its last reward is data even when that step is not sampled)
        assert b.mc_return[j].item() == pytest.approx(sum(gamma ** m * r(i, s + m) for m in range(T - s)),
                                                      rel=1e-6, abs=1e-6)
    # defaults: the file's rewards bit for bit; no discount, no return to go
    plain = load_replay(str(path), CAMS, PROP, progress=False)
    assert plain.mc_return is None and plain.gather(plain._src_table).mc_return is None
    want = np.concatenate([[reward_of(i, t) for t in range(T)] for i, T in enumerate(lengths)]).astype(np.float32)
    assert torch.equal(plain.reward, torch.from_numpy(want))


def test_datamodule_passes_reward_scale_bias_and_discount(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (4, 3), (True, True))
    cfg = small_cfg(**{"algo.reward_scale": 4.0, "algo.reward_bias": -2.0, "algo.discount": 0.9})
    dm = ReplayDataModule(cfg, str(path), CAMS, PROP, 7, image_size=8)
    dm.setup()
    rb = dm.replay
    base = np.array([reward_of(0, t) for t in range(4)] + [reward_of(1, t) for t in range(3)])
    np.testing.assert_allclose(rb.reward.numpy(), 4.0 * base - 2.0, rtol=1e-6)
    np.testing.assert_allclose(rb.mc_return.numpy()[:4], [sum(0.9 ** m * (4 * base[t + m] - 2) for m in range(4 - t))
                                                          for t in range(4)], rtol=1e-5)
    assert dm.replay.sample(3, dm.generator).mc_return.shape == (3,)


def test_new_flags_parse_and_bad_values_are_one_line_errors():
    cfg = parse_train_args(["--algo.target_encoder", "true", "--algo.target_action", "mean", "--algo.reward_scale",
                            "4", "--algo.reward_bias", "-2", "--cql.lagrange_lr", "0.01", "--cql.init_alpha_prime",
                            "0.5", "--cql.gap_floor", "-1"])
    assert cfg.algo.target_encoder and cfg.algo.target_action == "mean"
    assert (cfg.algo.reward_scale, cfg.algo.reward_bias) == (4.0, -2.0)
    assert (cfg.cql.lagrange_lr, cfg.cql.init_alpha_prime, cfg.cql.gap_floor) == (0.01, 0.5, -1.0)
    d = TrainConfig()
    assert (d.algo.target_encoder, d.algo.target_action, d.algo.reward_scale, d.algo.reward_bias) == \
        (False, "sample", 1.0, 0.0)
    assert (d.cql.lagrange_lr, d.cql.init_alpha_prime, d.cql.gap_floor) == (None, 1.0, None)
    for argv, needle in [(["--algo.reward_scale", "0"], "--algo.reward_scale"),
                         (["--algo.reward_bias", "nan"], "algo.reward_bias"),
                         (["--cql.lagrange_lr", "-1"], "--cql.lagrange_lr"),
                         (["--cql.init_alpha_prime", "0"], "--cql.init_alpha_prime"),
                         (["--cql.gap_floor", "inf"], "cql.gap_floor"),
                         (["--algo.target_action", "mode"], "algo.target_action"),
                         (["--algo.target_action", "mean", "--algo.entropy_backup", "true"], "--algo.target_action")]:
        with pytest.raises(UserError) as e:
            parse_train_args(argv)
        assert needle in str(e.value) and "\n" not in str(e.value), (argv, str(e.value))
