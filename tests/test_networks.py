"""Shape, equivalence and probability tests of the encoders, twin Q heads and tanh-Gaussian actor."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from visual_dr3.learner.encoders import ConvEncoder, ResNetEncoder, make_encoder
from visual_dr3.learner.networks import QHeads, TanhGaussianActor, count_parameters, polyak_update

KEYS2 = ("agentview_image", "robot0_eye_in_hand_image")


def _obs(keys, b=3, size=32, proprio=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8) for k in keys}
    obs["proprio"] = torch.randn(b, proprio, generator=g)
    return obs


# ---------------------------------------------------------------- encoders

@pytest.mark.parametrize("keys", [KEYS2[:1], KEYS2])
def test_conv_encoder_shapes_uint8(keys):
    enc = make_encoder("drq", keys, 32, proprio_dim=5, feature_dim=16)
    assert isinstance(enc, ConvEncoder)
    phi = enc(_obs(keys))
    assert phi.shape == (3, 16) and phi.dtype == torch.float32
    assert phi.abs().max() <= 1.0  # tanh bottleneck
    # 32x32 -> 15 -> 13 -> 11 -> 9: 32 * 81 per camera, + proprio
    assert enc.trunk_dim == 32 * 9 * 9 * len(keys) + 5
    assert enc.trunk(_obs(keys)).shape == (3, enc.trunk_dim)


@pytest.mark.parametrize("kind", ["drq", "resnet18"])
def test_proprio_features_get_their_own_head(kind):
    """proprio_features N: phi = cat(camera bottleneck (F - N), tanh(LayerNorm(Linear(proprio))) (N))."""
    enc = make_encoder(kind, KEYS2, 32, proprio_dim=5, feature_dim=16, proprio_features=4)
    enc.set_proprio_stats([1.0] * 5, [2.0] * 5)
    obs = _obs(KEYS2)
    phi = enc(obs)
    assert phi.shape == (3, 16) and phi.abs().max() <= 1.0
    lin, ln = enc.proprio_head[0], enc.proprio_head[1]
    z = lin((obs["proprio"] - 1.0) / 2.0)
    expected = torch.tanh((z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-5))
    torch.testing.assert_close(phi[:, 12:], torch.tanh(ln(z)))
    torch.testing.assert_close(phi[:, 12:], expected)  # LayerNorm at init: weight 1, bias 0
    cut = enc.trunk_dim - 5
    torch.testing.assert_close(phi[:, :12], enc.bottleneck(enc.trunk(obs)[:, :cut]))
    # the proprio part does not see the images; the image part does not see proprio
    other = _obs(KEYS2, seed=1)
    other["proprio"] = obs["proprio"]
    torch.testing.assert_close(enc(other)[:, 12:], phi[:, 12:])
    moved = dict(obs, proprio=obs["proprio"] + 1.0)
    torch.testing.assert_close(enc(moved)[:, :12], phi[:, :12])
    assert not torch.allclose(enc(moved)[:, 12:], phi[:, 12:])
    # 0 is today's encoder; impossible sizes are refused
    assert make_encoder(kind, KEYS2, 32, proprio_dim=5, feature_dim=16).proprio_head is None
    for bad, pdim in [(16, 5), (-1, 5), (4, 0)]:
        with pytest.raises(ValueError, match="proprio_features"):
            make_encoder(kind, KEYS2, 32, proprio_dim=pdim, feature_dim=16, proprio_features=bad)


def test_conv_encoder_separate_weights_and_non_square():
    enc = ConvEncoder(KEYS2, (40, 36), proprio_dim=0, feature_dim=8, channels=4, num_layers=2)
    w0, w1 = (enc.convs[k][0].weight for k in KEYS2)
    assert w0 is not w1 and not torch.equal(w0, w1)
    obs = {k: torch.zeros(2, 3, 40, 36, dtype=torch.uint8) for k in KEYS2}  # no proprio key needed
    assert enc(obs).shape == (2, 8)
    with pytest.raises(ValueError):
        ConvEncoder(KEYS2, 8, proprio_dim=0)
    with pytest.raises(TypeError, match="uint8"):
        enc({k: v.float() for k, v in obs.items()})


def test_conv_encoder_channels_last_matches_contiguous():
    enc = ConvEncoder(KEYS2, 32, proprio_dim=5, feature_dim=16)
    obs = _obs(KEYS2)
    obs_cl = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v) for k, v in obs.items()}
    assert obs_cl[KEYS2[0]].is_contiguous(memory_format=torch.channels_last)
    enc_cl = ConvEncoder(KEYS2, 32, proprio_dim=5, feature_dim=16).to(memory_format=torch.channels_last)
    enc_cl.load_state_dict(enc.state_dict())
    ref = enc(obs)
    torch.testing.assert_close(enc(obs_cl), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc_cl(obs_cl), ref, atol=1e-5, rtol=1e-5)


def test_resnet_encoder_groupnorm_spatial_softmax():
    enc = make_encoder("resnet18", KEYS2[:1], 64, proprio_dim=5, feature_dim=16, num_kp=8)
    assert isinstance(enc, ResNetEncoder)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in enc.modules())
    # 64x64 -> 2x2 feature map: keypoint grid at the corners
    assert enc.pools[KEYS2[0]].pos.tolist() == [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
    obs = _obs(KEYS2[:1], b=2, size=64)
    assert enc.trunk(obs).shape == (2, 2 * 8 + 5)
    phi = enc(obs)
    assert phi.shape == (2, 16)
    # keypoints are expected coordinates in [-1, 1]
    kp = enc.pools[KEYS2[0]](enc.convs[KEYS2[0]](obs[KEYS2[0]].float() / 255 - 0.5))
    assert kp.shape == (2, 16) and kp.abs().max() <= 1.0
    # spatial softmax = expected (x, y) under a softmax over locations
    sm = enc.pools[KEYS2[0]]
    maps = torch.randn(1, 512, 2, 2)
    w = torch.softmax(sm.keypoints(maps).flatten(2), -1)[0, 0]  # keypoint 0, locations (y0x0, y0x1, y1x0, y1x1)
    x0, y0 = (-w[0] + w[1] - w[2] + w[3]).item(), (-w[0] - w[1] + w[2] + w[3]).item()
    assert sm(maps)[0, :2].tolist() == pytest.approx([x0, y0], abs=1e-6)


def test_make_encoder_unknown_kind():
    with pytest.raises(ValueError, match="drq.*resnet18"):
        make_encoder("vit", KEYS2, 32, 5)


# ---------------------------------------------------------------- Q heads

def test_qheads_shapes_and_penultimate():
    q = QHeads(16, 3, hidden=(32, 24))
    phi, a = torch.randn(4, 16), torch.rand(4, 3) * 2 - 1
    q1, q2 = q(phi, a)
    assert q1.shape == q2.shape == (4,)
    q1b, q2b, pen = q(phi, a, return_penultimate=True)
    assert pen.shape == (2, 4, 24) and (pen >= 0).all()
    torch.testing.assert_close(q1b, q1)
    assert not torch.allclose(q1, q2)  # two independent heads


def test_qheads_first_layer_equals_concat_mlp():
    torch.manual_seed(0)
    q = QHeads(6, 2, hidden=(8, 8))
    phi, a = torch.randn(5, 6), torch.randn(5, 2)
    x = torch.cat([phi, a], -1)
    for i, qi in enumerate(q(phi, a)):
        body, out = q.heads[i]["body"], q.heads[i]["out"]
        torch.testing.assert_close(qi, out(body(x)).squeeze(-1))


def test_qheads_sampled_actions_equal_loop():
    torch.manual_seed(0)
    q = QHeads(16, 3, hidden=(32, 32))
    phi, acts = torch.randn(4, 16), torch.rand(4, 5, 3) * 2 - 1
    q1, q2, pen = q(phi, acts, return_penultimate=True)
    assert q1.shape == (4, 5) and pen.shape == (2, 4, 5, 32)
    for j in range(5):
        l1, l2, lpen = q(phi, acts[:, j], return_penultimate=True)
        torch.testing.assert_close(q1[:, j], l1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q2[:, j], l2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pen[:, :, j], lpen, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- actor

def _reference_dist(actor, phi):
    mean, log_std = actor(phi)
    return TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()]), mean, log_std


def test_actor_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(8, 3, hidden=(16,))
    phi = torch.randn(6, 8)
    a = torch.rand(6, 3) * 1.8 - 0.9
    dist, _, _ = _reference_dist(actor, phi)
    torch.testing.assert_close(actor.log_prob(phi, a), dist.log_prob(a).sum(-1), atol=1e-5, rtol=1e-5)
    # (B, N, A) dataset-action path
    an = torch.rand(6, 4, 3) * 1.8 - 0.9
    ref = torch.stack([dist.log_prob(an[:, j]).sum(-1) for j in range(4)], 1)
    torch.testing.assert_close(actor.log_prob(phi, an), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_samples", [None, 4])
def test_actor_sample_log_prob_matches_reference(num_samples):
    torch.manual_seed(0)
    actor = TanhGaussianActor(8, 3, hidden=(16,))
    phi = torch.randn(5, 8)
    a, lp = actor.sample(phi, generator=torch.Generator().manual_seed(1), num_samples=num_samples)
    shape = (5, 3) if num_samples is None else (5, num_samples, 3)
    assert a.shape == shape and lp.shape == shape[:-1]
    assert (a.abs() < 1).all()
    # rebuild u with the same noise, score it with torch.distributions on the pre-tanh variable
    mean, log_std = actor(phi)
    if num_samples is not None:
        mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    u = mean + log_std.exp() * eps
    torch.testing.assert_close(a, torch.tanh(u))
    ref = (Normal(mean, log_std.exp()).log_prob(u) - TanhTransform().log_abs_det_jacobian(u, torch.tanh(u))).sum(-1)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp, actor.log_prob(phi, a), atol=1e-4, rtol=1e-4)


def test_actor_sample_is_reparameterised_and_generator_reproducible():
    actor = TanhGaussianActor(8, 2, hidden=(16,))
    phi = torch.randn(3, 8)
    a1, _ = actor.sample(phi, generator=torch.Generator().manual_seed(3))
    a2, lp2 = actor.sample(phi, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    (a2.sum() + lp2.sum()).backward()
    assert actor.out.weight.grad is not None and actor.out.weight.grad.abs().sum() > 0


def test_actor_mode_and_log_std_clamp():
    actor = TanhGaussianActor(4, 2, hidden=(), log_std_min=-5.0, log_std_max=2.0)
    with torch.no_grad():
        actor.out.weight.zero_()
        actor.out.bias.copy_(torch.tensor([0.3, -0.2, 50.0, -50.0]))
    phi = torch.randn(3, 4)
    mean, log_std = actor(phi)
    assert log_std[:, 0].eq(2.0).all() and log_std[:, 1].eq(-5.0).all()
    torch.testing.assert_close(actor.mode(phi), torch.tanh(torch.tensor([0.3, -0.2])).expand(3, 2))


def test_actor_gradient_does_not_leak_into_detached_phi():
    keys = KEYS2[:1]
    enc = ConvEncoder(keys, 32, proprio_dim=5, feature_dim=16, channels=8)
    actor, q = TanhGaussianActor(16, 3, hidden=(16,)), QHeads(16, 3, hidden=(16,))
    phi = enc(_obs(keys))
    a, lp = actor.sample(phi.detach())
    q1, q2 = q(phi.detach(), a)
    (lp - torch.minimum(q1, q2)).mean().backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in actor.parameters())


# ---------------------------------------------------------------- utilities

def test_count_parameters():
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # 8 + 3
    assert count_parameters(m) == 11
    m[0].weight.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == 5


def test_polyak_update_exact():
    target = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    online = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    polyak_update(target, online, 0.1)
    assert target[0].tolist() == pytest.approx([0.1, 0.2])
    assert target[1].tolist() == [[pytest.approx(1.2)]]
    assert online[0].tolist() == [1.0, 2.0]
    # modules, with requires_grad parameters (runs under no_grad)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [0.75 * pa.detach() + 0.25 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    polyak_update(a.parameters(), b.parameters(), 0.25)
    for pa, e in zip(a.parameters(), expected):
        torch.testing.assert_close(pa.detach(), e)
    with pytest.raises(ValueError):
        polyak_update(list(a.parameters())[:1], b.parameters(), 0.1)


def test_tanh_log_det_stable_for_large_pre_tanh():
    # log(1 - tanh(u)^2) via the stable form stays finite where the naive form gives -inf
    actor = TanhGaussianActor(2, 1, hidden=())
    u = torch.tensor([[20.0]])
    lp = actor._log_prob_pre_tanh(u, torch.zeros_like(u), torch.zeros_like(u))
    naive_log_det = torch.log(1 - torch.tanh(u) ** 2)
    assert torch.isinf(naive_log_det).all() and torch.isfinite(lp).all()
    assert lp.item() == pytest.approx(-0.5 * math.log(2 * math.pi) - 2 * (math.log(2) - 20.0), rel=1e-5)
