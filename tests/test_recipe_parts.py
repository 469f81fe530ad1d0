"""The learning recipe's parts, with exact expectations: n-step transitions, dataset statistics, fixed action
dims, proprio standardisation, behaviour cloning's update, presets and default dataset names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from h5fixtures import CAMERAS, PROPRIO, decode_images, reward_of, write_file
from visual_dr3.data.replay import SourceSpec, load_replay, n_step_transitions
from visual_dr3.data.stats import dataset_stats
from visual_dr3.envs.tasks import default_dataset_path
from visual_dr3.errors import UserError
from visual_dr3.app.cli_args import CONFIGS_DIR, parse_train_args, preset_files
from visual_dr3.learner.config import TrainConfig, to_dict
from visual_dr3.learner.module import DR3CQL

CAMS, PROP = list(CAMERAS), list(PROPRIO)
CONFIGS = CONFIGS_DIR  # the shipped presets (package data)


def all_of(rb):
    return rb.gather(rb._src_table)  # every sampleable transition once


@pytest.mark.parametrize("next_obs", [True, False])
def test_n_step_transitions_exact(tmp_path, next_obs):
    lengths, succ, n, gamma = (5, 3, 4), (True, False, True), 3, 0.5
    path = write_file(tmp_path / "a.hdf5", lengths, succ, next_obs=next_obs)
    rb = load_replay(str(path), CAMS, PROP, n_step=n, discount=gamma, progress=False)
    b = all_of(rb)
    demo, t = decode_images(b.obs[CAMS[0]].numpy())[:, 0], decode_images(b.obs[CAMS[0]].numpy())[:, 1]
    nd, nt = decode_images(b.next_obs[CAMS[0]].numpy())[:, 0], decode_images(b.next_obs[CAMS[0]].numpy())[:, 1]
    seen = set()
    for j in range(len(demo)):
        i, s, T = int(demo[j]), int(t[j]), lengths[int(demo[j])]
        seen.add((i, s))
        # without next_obs a truncated (failed) demo's last step is not sampleable and no backup crosses it
        last = T - 1 if (next_obs or succ[i]) else T - 2
        k = min(n, last - s + 1)
        assert b.reward[j].item() == pytest.approx(sum(gamma ** m * reward_of(i, s + m) for m in range(k)))
        assert b.discount[j].item() == pytest.approx(gamma ** k)
        end = s + k - 1  # the step whose s', done and a' the transition takes
        assert b.done[j].item() == float(succ[i] and end == T - 1)
        s_next = end + 1 if (next_obs or end < T - 1) else end  # s' = s on a terminal last step w/o next_obs
        assert (nd[j], nt[j]) == (i, s_next)
        assert b.next_action[j, 1].item() == min(end + 1, T - 1)  # a_{t+k}, a_T-1 at the demo's end
    want = {(i, s) for i, T in enumerate(lengths) for s in range(T) if next_obs or succ[i] or s < T - 1}
    assert seen == want


def test_n_step_one_is_the_one_step_transition(tmp_path):
    path = write_file(tmp_path / "a.hdf5")
    one = all_of(load_replay(str(path), CAMS, PROP, progress=False))
    ns = all_of(load_replay(str(path), CAMS, PROP, n_step=1, discount=0.9, progress=False))
    assert one.discount is None and torch.all(ns.discount == torch.tensor(0.9))
    for a, b in ((one.reward, ns.reward), (one.done, ns.done), (one.next_action, ns.next_action),
                 (one.next_obs[CAMS[0]], ns.next_obs[CAMS[0]])):
        assert torch.equal(a, b)


def test_n_step_stops_at_terminals_inside_a_demo():
    # one demo of 4 steps with a terminal at step 1 (robomimic allows dones inside a demo)
    r = np.array([1.0, 2.0, 4.0, 8.0], np.float32)
    d = np.array([0.0, 1.0, 0.0, 0.0], np.float32)
    obs_i, next_i = np.arange(4), np.arange(1, 5)
    out = n_step_transitions(r, d, obs_i, next_i, np.ones(4, bool), 3, 0.5)
    np.testing.assert_allclose(out["reward"], [1 + 0.5 * 2, 2, 4 + 0.5 * 8, 8])
    np.testing.assert_array_equal(out["last"], [1, 1, 3, 3])
    np.testing.assert_allclose(out["discount"], [0.25, 0.5, 0.25, 0.5])
    with pytest.raises(ValueError):
        n_step_transitions(r, d, obs_i, next_i, np.ones(4, bool), 0, 0.5)


def test_dataset_stats_and_fixed_action_dims(tmp_path):
    path = write_file(tmp_path / "a.hdf5", (5, 3), masks={"first": ["demo_0"]})
    s = dataset_stats([SourceSpec(str(path))], CAMS, PROP, 7)
    # fixture actions: dim 0 = demo, dim 1 = step, dim 2 = file id (0), dims 3.. = 0.1 * (1, 2, 3, 4)
    assert s["fixed_actions"] == [None, None, 0.0, pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3),
                                  pytest.approx(0.4)]
    assert s["transitions"] == 8
    rb = load_replay(str(path), CAMS, PROP, progress=False)
    np.testing.assert_allclose(s["proprio_mean"], rb.proprio.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(s["proprio_std"], rb.proprio.double().std(0, unbiased=False).numpy(), rtol=1e-6)
    # a filter key restricts the statistics to its demos: demo_0 alone has a constant dim 0 too
    s0 = dataset_stats([SourceSpec(str(path), "first")], CAMS, PROP, 7)
    assert s0["fixed_actions"][0] == 0.0 and s0["fixed_actions"][1] is None and s0["transitions"] == 5


def make_module(cfg, stats, proprio_dim=5, action_dim=7):
    return DR3CQL(to_dict(cfg), CAMS, PROP, proprio_dim, 8, action_dim, dataset_stats=stats)


def test_module_learns_only_the_varying_dims_and_fills_the_rest():
    stats = {"fixed_actions": [None, None, None, 0.0, 0.5, 0.0, None], "proprio_mean": [1.0] * 5,
             "proprio_std": [2.0, 2.0, 2.0, 2.0, 1e-9]}
    cfg = TrainConfig()
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.num_layers = 16, [16], 1
    m = make_module(cfg, stats)
    assert m.learned_dims == [0, 1, 2, 6] and m.q.action_dim == 4 and m.actor.action_dim == 4
    a = m.full_action(torch.tensor([[0.1, 0.2, 0.3, -1.0]]))
    assert torch.equal(a, torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.5, 0.0, -1.0]]))
    obs = {k: torch.zeros(2, 3, 8, 8, dtype=torch.uint8) for k in CAMS}
    obs["proprio"] = torch.tensor([[3.0, 1.0, -1.0, 1.0, 1.0]] * 2)
    assert m.act(obs).shape == (2, 7)
    # proprio standardised with the dataset's statistics (std floored at 1e-3), kept in the state dict
    trunk = m.encoder.trunk(obs)
    torch.testing.assert_close(trunk[0, -5:], torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0]))
    assert torch.equal(m.encoder.proprio_std, torch.tensor([2.0, 2.0, 2.0, 2.0, 1e-3]))
    assert torch.equal(m.action_fill, torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0]))
    # rebuilt from the saved hyperparameters alone (what eval.py does), the same statistics and fixed dims apply
    m3 = DR3CQL(**dict(m.hparams))
    m3.load_state_dict(m.state_dict())
    assert torch.equal(m3.encoder.proprio_std, m.encoder.proprio_std) and m3.learned_dims == m.learned_dims
    torch.testing.assert_close(m3.act(obs), m.act(obs))
    # "none" learns every dim; normalize_proprio false leaves proprio raw
    cfg.data.fixed_action_dims, cfg.data.normalize_proprio = "none", False
    m2 = make_module(cfg, stats)
    assert m2.learned_dims == list(range(7)) and torch.equal(m2.encoder.proprio_std, torch.ones(5))


def test_bc_module_has_no_critic_and_trains_its_encoder():
    cfg = TrainConfig(algorithm="bc")
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.num_layers = 16, [16], 1
    m = make_module(cfg, None)
    assert m.q is None and m.q_target is None and m.actor_encoder is None
    names = [g["name"] for g in m.configure_optimizers().param_groups]
    assert names == ["actor"]
    enc = {id(p) for p in m.encoder.parameters()}
    assert enc <= {id(p) for p in m.actor_parameters()}
    from visual_dr3.data.replay import Batch

    obs = {k: torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8) for k in CAMS}
    obs["proprio"] = torch.randn(4, 5)
    act = torch.rand(4, 7) * 2 - 1
    batch = Batch(obs=obs, next_obs=obs, action=act, reward=torch.zeros(4), done=torch.zeros(4),
                  next_action=act, source=torch.zeros(4, dtype=torch.long))
    opt = m.configure_optimizers()
    out, _ = m.backward_step(batch, 0, opt, torch.Generator().manual_seed(0), lambda l: l.backward())
    # the loss is exactly the negative log-likelihood of the dataset actions
    with torch.no_grad():
        nll = -m.actor.log_prob(m.encoder(obs), act).mean()
    torch.testing.assert_close(out.total.detach(), nll)
    assert all(p.grad is not None for p in m.encoder.parameters() if p.requires_grad)


def test_presets_layer_the_cpu_file_and_record_the_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    (tmp_path / "lift.yaml").write_text("task: lift\nbatch_size: 256\nmax_steps: 100\n")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "lift.yaml").write_text("batch_size: 64\n")
    cpu = parse_train_args(["--preset", "cpu"], configs_dir=tmp_path)
    assert (cpu.preset, cpu.batch_size, cpu.max_steps) == ("cpu", 64, 100)
    gpu = parse_train_args(["--preset", "gpu"], configs_dir=tmp_path)
    assert (gpu.preset, gpu.batch_size) == ("gpu", 256)
    assert parse_train_args(["--preset", "cpu", "--batch-size", "8"], configs_dir=tmp_path).batch_size == 8
    auto = parse_train_args([], configs_dir=tmp_path)
    assert auto.preset == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--preset"):
        parse_train_args(["--preset", "tpu"], configs_dir=tmp_path)
    monkeypatch.setenv("VISUAL_DR3_PRESET", "cpu")
    assert parse_train_args([], configs_dir=tmp_path).batch_size == 64  # the environment's choice ...
    assert parse_train_args(["--preset", "gpu"], configs_dir=tmp_path).batch_size == 256  # ... under the flag's
    monkeypatch.setenv("VISUAL_DR3_PRESET", "tpu")
    with pytest.raises(UserError, match="VISUAL_DR3_PRESET"):
        parse_train_args([], configs_dir=tmp_path)
    assert preset_files(CONFIGS, "lift", "cpu") == [CONFIGS / "lift.yaml", CONFIGS / "cpu" / "lift.yaml"]
    assert preset_files(CONFIGS, "lift", "gpu") == [CONFIGS / "lift.yaml", CONFIGS / "gpu" / "lift.yaml"]
    assert preset_files(CONFIGS, "stack", "cpu") == [CONFIGS / "stack.yaml"]  # no cpu file: the method file alone
    assert preset_files(CONFIGS, "lift", "none") == []


def test_default_dataset_names():
    assert default_dataset_path("lift") == Path("data/lift_mixed.hdf5")
    assert default_dataset_path("lift", "expert", 200, 84) == Path("data/lift_expert.hdf5")
    assert default_dataset_path("lift", "expert", 50, 48) == Path("data/lift_expert_48px_50ep.hdf5")
    assert default_dataset_path("pick_place", None, None, 48) == Path("data/pick_place_mixed_48px_100ep.hdf5")


def test_awr_actor_loss_exact():
    from visual_dr3.learner.losses import awr_actor_loss

    logp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    q_data = torch.tensor([1.0, 0.5, 0.2], requires_grad=True)
    v = torch.tensor([0.5, 0.5, 0.9])
    loss, w = awr_actor_loss(logp, q_data, v, beta=0.5, max_weight=2.0)
    want_w = torch.tensor([min(np.exp(1.0), 2.0), 1.0, np.exp(-1.4)], dtype=torch.float32)
    torch.testing.assert_close(w, want_w)
    torch.testing.assert_close(loss, -(want_w * logp).mean())
    loss.backward()
    assert q_data.grad is None or torch.all(q_data.grad == 0)  # the critic gets no gradient from the actor
    torch.testing.assert_close(logp.grad, -want_w / 3)


def test_default_dataset_of_the_cpu_preset_is_generated_once_with_data_seed_0(tmp_path, monkeypatch):
    import visual_dr3.data.generate as gen
    from visual_dr3.envs.tasks import get_task
    from visual_dr3.app import dataset as train

    calls = []

    def fake_generate(**kw):  # records the request and writes the file the real generator would write
        calls.append(kw)
        Path(kw["out"]).write_bytes(b"")

    monkeypatch.setattr(gen, "generate_dataset", fake_generate)
    monkeypatch.chdir(tmp_path)  # the default datasets are made under the working directory
    monkeypatch.delenv(train.DATA_ROOT_ENV, raising=False)
    cfg = parse_train_args(["--preset", "cpu", "--seed", "3"], configs_dir=CONFIGS)
    path = train.resolve_dataset(cfg, get_task("lift"))
    assert path == tmp_path / "data" / "lift_expert_48px_100ep.hdf5" and path.is_file()
    assert [(c["kind"], c["episodes"], c["image_size"], c["seed"]) for c in calls] == [("expert", 100, 48, 0)]
    assert train.resolve_dataset(cfg, get_task("lift")) == path and len(calls) == 1  # found, not made again


def test_proprio_features_reach_both_encoders_and_are_validated():
    from visual_dr3.learner.config import validate

    cfg = TrainConfig()
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.num_layers = 16, [16], 1
    cfg.model.actor_encoder, cfg.model.proprio_features = "separate", 4
    m = make_module(cfg, None)
    for enc in (m.encoder, m.actor_encoder):
        assert enc.proprio_features == 4 and enc.proprio_head[0].out_features == 4
        assert enc.bottleneck[0].out_features == 12
    obs = {k: torch.zeros(2, 3, 8, 8, dtype=torch.uint8) for k in CAMS}
    obs["proprio"] = torch.randn(2, 5)
    assert m.act(obs).shape == (2, 7)
    m2 = DR3CQL(**dict(m.hparams))  # what eval.py rebuilds from a checkpoint
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.act(obs), m.act(obs))
    for bad in (16, -1):
        cfg.model.proprio_features = bad
        with pytest.raises(UserError, match=r"^--model.proprio_features: got .*; expected an integer in \[0, "):
            validate(cfg)


@pytest.mark.parametrize("algorithm,actor_encoder", [("bc", "shared"), ("cql", "separate"), ("cql", "shared")])
def test_policy_ema_follows_its_recursion_and_acts(algorithm, actor_encoder):
    from visual_dr3.data.replay import Batch
    from visual_dr3.learner.update import ema_decay

    assert [ema_decay(0.99, t) for t in (0, 8)] == [0.1, 0.5] and ema_decay(0.99, 10_000) == 0.99
    cfg = TrainConfig(algorithm=algorithm)
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.num_layers = 16, [16], 1
    cfg.model.actor_encoder, cfg.algo.policy_ema = actor_encoder, 0.6
    torch.manual_seed(0)
    m = make_module(cfg, None)
    enc, actor = m.trained_acting_nets()
    assert enc is (m.actor_encoder if algorithm == "cql" and actor_encoder == "separate" else m.encoder)
    assert not any(p.requires_grad for p in list(m.ema_encoder.parameters()) + list(m.ema_actor.parameters()))
    assert all(g["params"] and all(p.requires_grad for p in g["params"]) for g in m.configure_optimizers().param_groups)
    trained = lambda: [p.detach().clone() for p in list(enc.parameters()) + list(actor.parameters())]
    expect = trained()  # the average starts at the initial weights
    opt = m.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        obs = {k: torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8, generator=gen) for k in CAMS}
        obs["proprio"] = torch.randn(4, 5, generator=gen)
        act = torch.rand(4, 7, generator=gen) * 2 - 1
        batch = Batch(obs=obs, next_obs=obs, action=act, reward=torch.ones(4), done=torch.zeros(4),
                      next_action=act, source=torch.zeros(4, dtype=torch.long))
        m.backward_step(batch, step, opt, gen, lambda l: l.backward())
        m.optimizer_step(opt, step)
        d = min(0.6, (1 + step) / (10 + step))
        expect = [d * e + (1 - d) * w for e, w in zip(expect, trained())]
    got = [p.detach() for p in list(m.ema_encoder.parameters()) + list(m.ema_actor.parameters())]
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e)
    assert any(not torch.allclose(g, w) for g, w in zip(got, trained()))
    # act() uses the average; act_with_ema False uses the trained weights; both survive a rebuild + load
    with torch.no_grad():
        ema_a = m.full_action(m.ema_actor.mode(m.ema_encoder(obs)))
        raw_a = m.full_action(actor.mode(enc(obs)))
    assert not torch.allclose(ema_a, raw_a)
    torch.testing.assert_close(m.act(obs), ema_a)
    m2 = DR3CQL(**dict(m.hparams))
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.act(obs), ema_a)
    m2.act_with_ema = False
    torch.testing.assert_close(m2.act(obs), raw_a)


def test_policy_ema_is_validated():
    from visual_dr3.learner.config import validate

    cfg = TrainConfig()
    cfg.algo.policy_ema = 1.0
    with pytest.raises(UserError, match="algo.policy_ema"):
        validate(cfg)
    cfg = TrainConfig()
    cfg.model.feature_dim, cfg.model.hidden_dims, cfg.model.num_layers = 16, [16], 1
    m = make_module(cfg, None)
    assert m.ema_actor is None and m.acting_nets() == m.trained_acting_nets()
