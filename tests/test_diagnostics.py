"""Exact-value tests of the representation diagnostics."""

import pytest
import torch

from visual_dr3.learner.diagnostics import feature_stats, srank


def test_feature_stats_exact():
    phi = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    phi_next = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    s = feature_stats(phi, phi_next)
    assert set(s) == {"dr3_dot", "dr3_cos", "phi_norm", "phi_next_norm"}
    assert all(v.dim() == 0 and not v.requires_grad for v in s.values())
    assert s["dr3_dot"].item() == pytest.approx((24.0 + 0.0) / 2)
    assert s["dr3_cos"].item() == pytest.approx((24.0 / 25.0 + 0.0) / 2)
    assert s["phi_norm"].item() == pytest.approx((5.0 + 1.0) / 2)
    assert s["phi_next_norm"].item() == pytest.approx((5.0 + 2.0) / 2)


def test_feature_stats_leading_dims_and_zero_vectors():
    phi = torch.zeros(2, 3, 4)
    s = feature_stats(phi, torch.ones(2, 3, 4))
    assert s["dr3_cos"].item() == 0.0 and s["phi_next_norm"].item() == pytest.approx(2.0)


@pytest.mark.parametrize("delta,expected", [(0.01, 4), (0.15, 3), (0.35, 2), (0.7, 1)])
def test_srank_diag(delta, expected):
    # singular values 4, 3, 2, 1: cumulative fractions 0.4, 0.7, 0.9, 1.0
    x = torch.zeros(6, 4)
    x[:4, :4] = torch.diag(torch.tensor([1.0, 4.0, 2.0, 3.0]))  # order does not matter
    r = srank(x, delta)
    assert r.dtype == torch.int64 and r.dim() == 0
    assert r.item() == expected


def test_srank_rotated_known_spectrum():
    # U diag(s) V^T with random orthogonal U, V: same singular values.
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 8, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    s = torch.tensor([10.0, 5.0, 3.0, 1.0, 0.5, 0.3, 0.1, 0.1], dtype=torch.float64)  # sum 20
    x = (u * s) @ v.T
    # fractions: .5 .75 .9 .95 .975 .99 .995 1.0
    assert srank(x, 0.2).item() == 3
    assert srank(x, 0.04).item() == 5
    assert srank(x.float(), 0.2).item() == 3


def test_srank_rank_deficient_and_zero():
    x = torch.zeros(5, 4)
    x[0, 0] = x[1, 1] = 2.0
    assert srank(x, 0.01).item() == 2
    assert srank(torch.zeros(3, 3)).item() == 0
    with pytest.raises(ValueError):
        srank(torch.zeros(3))
