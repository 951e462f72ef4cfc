"""The Cauchy-Schwarz divergence estimator against a brute-force double sum, and its properties."""

from __future__ import annotations

import math

import pytest
import torch

from tokenflow import Tokens
from tokenflow.losses import cs_divergence, cs_divergence_tokens, median_bandwidth


def brute(x, y, sigma):
    """The estimator written as plain double sums over points, float64."""
    def k(a, b):
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / (2 * sigma**2))

    def mean(a, b):
        return sum(k(p, q) for p in a for q in b) / (len(a) * len(b))

    return math.log(mean(x, x)) + math.log(mean(y, y)) - 2 * math.log(mean(x, y))


def _sample(n, d=5, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_matches_the_double_sum():
    x, y = _sample(6, seed=1), _sample(4, shift=0.7, seed=2)
    for sigma in (0.5, 1.3, 4.0):
        assert float(cs_divergence(x, y, sigma)) == pytest.approx(brute(x.tolist(), y.tolist(), sigma), rel=1e-9)


def test_zero_for_identical_samples_positive_otherwise_symmetric():
    x = _sample(7, seed=3)
    assert abs(float(cs_divergence(x, x.clone()))) < 1e-12
    assert abs(float(cs_divergence(x, x[torch.randperm(7)]))) < 1e-12  # a sample is a set
    y = _sample(5, shift=0.5, seed=4)
    d = float(cs_divergence(x, y))
    assert d > 0 and d == pytest.approx(float(cs_divergence(y, x)), rel=1e-12)
    assert float(cs_divergence(x, _sample(5, shift=3.0, seed=4))) > d  # further apart, larger


def test_median_heuristic_is_the_median_distance_of_the_pooled_sample():
    x, y = _sample(4, seed=5), _sample(3, seed=6)
    z = torch.cat([x, y])
    dists = [float((z[i] - z[j]).norm()) for i in range(7) for j in range(i + 1, 7)]
    assert float(median_bandwidth(x, y)) == pytest.approx(sorted(dists)[(len(dists) - 1) // 2], rel=1e-9)
    assert float(cs_divergence(x, y)) == pytest.approx(brute(x.tolist(), y.tolist(), float(median_bandwidth(x, y))),
                                                      rel=1e-9)


def test_stable_where_kernels_underflow_and_gradcheck():
    x, y = _sample(3, seed=7) * 50, _sample(3, seed=8) * 50  # exp(-d^2 / 2 sigma^2) is 0 in float64
    assert math.isfinite(float(cs_divergence(x, y, sigma=0.05)))
    xs = _sample(3, seed=9).requires_grad_()
    ys = _sample(4, shift=0.3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cs_divergence(a, b, 1.1), (xs, ys))


def test_token_variant_uses_real_tokens_only_and_bad_input_is_named():
    x, y = _sample(6, seed=11), _sample(5, seed=12)
    feats = torch.zeros(2, 4, 5, dtype=torch.float64)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    feats[0, :3], feats[1, :3] = x[:3], x[3:]
    mask[:, :3] = True
    feats[~mask] = float("nan")  # padding may hold anything
    vis = Tokens(feats, mask, torch.zeros(2, 5, dtype=torch.float64))
    txt = Tokens(y.unsqueeze(0), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.float64))
    assert float(cs_divergence_tokens(vis, txt, 1.0)) == pytest.approx(float(cs_divergence(x, y, 1.0)), rel=1e-12)
    with pytest.raises(ValueError, match="same D"):
        cs_divergence(x, y[:, :3])
    with pytest.raises(ValueError, match="at least one point"):
        cs_divergence(x[:0], y)
    with pytest.raises(ValueError, match="sigma must be positive"):
        cs_divergence(x, y, 0.0)
