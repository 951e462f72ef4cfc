"""The transport family (tokenflow.align.transport): presets vs naive references, convergence,
the scaling / log domains, gradients, option errors and the exact solvers' process pool."""

import numpy as np
import pytest
import torch

from tokenflow import Tokens, get_aligner
from tokenflow.align import get_aligner_class, transport
from tokenflow.align.transport import SCALING_RANGE, Transport, _exact, sinkhorn_plans

from .conftest import make_tokens
from .naive import naive_pairwise

PRESETS = [
    ("emd", {}),
    ("sinkhorn", {"eps": 0.1, "n_iter": 40}),
    ("partial-ot", {"mass": 0.7, "n_iter": 30}),
    ("partial-ot", {"marginals": "uniform"}),
    ("assignment", {}),
    ("assignment", {"exact": True}),
    ("omit", {}),
    ("omit", {"marginals": "l2g", "mass": 0.8, "solver": "exact"}),
]


@pytest.mark.parametrize("case", PRESETS, ids=lambda c: c[0] + "".join(f"-{k}={v}" for k, v in c[1].items()))
def test_every_preset_matches_its_naive_reference_with_junk_padding(case, gen):
    name, hp = case
    vis, txt = make_tokens(3, 7, 8, gen=gen, junk=-3e3), make_tokens(4, 6, 8, gen=gen, junk=5e2)
    ref_v2t, ref_t2v, _ = naive_pairwise(name, vis, txt, hp)
    s = get_aligner(name, **hp).double().pairwise(vis, txt)
    torch.testing.assert_close(s.v2t, torch.from_numpy(ref_v2t), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(s.t2v, torch.from_numpy(ref_t2v), rtol=1e-7, atol=1e-9)
    assert s.marginal_error is not None


@pytest.mark.parametrize("name, hp", [("sinkhorn", {}), ("partial-ot", {}), ("assignment", {"eps": 0.2})])
@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_at_tolerance_the_marginals_are_met(name, hp, tol, gen):
    aligner = get_aligner(name, tol=tol, n_iter=5000, **hp).double()
    vis, txt = make_tokens(3, 6, 8, gen=gen), make_tokens(4, 5, 8, gen=gen)
    s = aligner.pairwise(vis, txt)
    assert s.marginal_error <= tol
    for i, j in [(0, 0), (2, 3)]:
        p = aligner.plan(vis[i], txt[j])
        assert p.marginal_error <= tol and p.iterations % transport.CHECK_EVERY == 0 and p.iterations < 5000
    # Early stop is per pair: the scores do not depend on the block a pair sits in.
    torch.testing.assert_close(aligner.pairwise(vis, txt, chunk=1).v2t, s.v2t, rtol=1e-10, atol=1e-12)


def test_converged_plan_meets_its_row_marginals(gen):
    vis, txt = make_tokens(1, 6, 8, gen=gen, min_real=6), make_tokens(1, 5, 8, gen=gen, min_real=5)
    p = get_aligner("sinkhorn", tol=1e-8, n_iter=10000).double().plan(vis, txt)
    exact = get_aligner("emd").double().plan(vis, txt)  # same eq 14 marginals, met exactly
    assert (p.v2t.sum(1) - exact.v2t.sum(1)).abs().sum() <= 1e-8
    torch.testing.assert_close(p.v2t.sum(0), exact.v2t.sum(0), atol=1e-12, rtol=0)


def test_omit_default_runs_its_three_rounds_whatever_the_error(gen):
    vis, txt = make_tokens(2, 6, 8, gen=gen), make_tokens(3, 5, 8, gen=gen)
    aligner = get_aligner("omit").double()
    p = aligner.plan(vis[0], txt[0])
    assert p.iterations == 3 and p.marginal_error > 1e-4  # far from converged, by design
    assert aligner.tol is None


def _problem(gen, p, l1, l2, spread, dtype):
    """c with (max - min) / eps == spread for every pair (eps = 1), uniform masses."""
    c = torch.rand(p, l1, l2, generator=gen, dtype=torch.float64)
    c = (c - c.amin((1, 2), keepdim=True)) / (c.amax((1, 2), keepdim=True) - c.amin((1, 2), keepdim=True))
    c = (c * spread).to(dtype)
    a = torch.full((p, l1), 1.0 / l1, dtype=dtype)
    b = torch.full((p, l2), 1.0 / l2, dtype=dtype)
    return c, a, b, torch.ones(p, l2, dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mass", [1.0, 0.7])
def test_scaling_and_log_domains_agree_at_the_boundary_of_the_safety_rule(dtype, mass, gen):
    limit = SCALING_RANGE[dtype]
    c, a, b, cols = _problem(gen, 6, 5, 7, limit * (1 - 1e-6), dtype)
    scaling = sinkhorn_plans(c, a, b, cols, 1.0, 200, mass=mass, domain="scaling")
    log = sinkhorn_plans(c, a, b, cols, 1.0, 200, mass=mass, domain="log")
    auto = sinkhorn_plans(c, a, b, cols, 1.0, 200, mass=mass)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.isfinite(scaling.plan).all()
    torch.testing.assert_close(scaling.plan, log.plan, atol=tol, rtol=tol)
    torch.testing.assert_close(auto.plan, scaling.plan, atol=0, rtol=0)  # inside the rule: scaling
    # Just outside, auto takes the log domain.
    c2 = c * (1 + 1e-4) / (1 - 1e-6)
    outside = sinkhorn_plans(c2, a, b, cols, 1.0, 200, mass=mass)
    torch.testing.assert_close(outside.plan, sinkhorn_plans(c2, a, b, cols, 1.0, 200, mass=mass, domain="log").plan,
                               atol=0, rtol=0)


@pytest.mark.parametrize("name, hp", [("sinkhorn", {"n_iter": 12}), ("partial-ot", {"n_iter": 12}),
                                      ("sinkhorn", {"n_iter": 40, "tol": 1e-3}), ("omit", {"marginals": "l2g"})])
def test_unroll_gradcheck(name, hp, gen):
    aligner = get_aligner(name, **hp).double()
    vis, txt = make_tokens(2, 3, 4, gen=gen), make_tokens(2, 4, 4, gen=gen)
    inputs = [vis.zero_padding().feats.clone().requires_grad_(), txt.zero_padding().feats.clone().requires_grad_(),
              vis.pooled.clone().requires_grad_(), txt.pooled.clone().requires_grad_()]

    def f(vf, tf_, vp, tp):
        return aligner.pairwise(Tokens(vf, vis.mask, vp), Tokens(tf_, txt.mask, tp), check=False).v2t

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sinkhorn", "partial-ot"])
def test_gradient_through_the_marginals_alone(name, gen):
    # Only the global features want a gradient: c is a constant (the no-grad kernel route),
    # the eq 14 marginals are not.
    aligner = get_aligner(name, n_iter=12).double()
    vis, txt = make_tokens(2, 3, 4, gen=gen), make_tokens(2, 4, 4, gen=gen)
    vp = vis.pooled.clone().requires_grad_()
    aligner.pairwise(Tokens(vis.feats, vis.mask, vp), txt).v2t.sum().backward()
    vp2, vf = vis.pooled.clone().requires_grad_(), vis.feats.clone().requires_grad_()
    aligner.pairwise(Tokens(vf, vis.mask, vp2), txt).v2t.sum().backward()
    assert vp.grad.abs().sum() > 0
    torch.testing.assert_close(vp.grad, vp2.grad, rtol=1e-10, atol=1e-12)


def test_plan_fixed_gradient_is_autograd_through_c_with_the_plan_detached(gen):
    aligner = get_aligner("sinkhorn", grad="plan-fixed", n_iter=20).double()
    vis, txt = make_tokens(3, 5, 6, gen=gen), make_tokens(2, 4, 6, gen=gen)
    vf = vis.feats.clone().requires_grad_()
    aligner.pairwise(Tokens(vf, vis.mask, vis.pooled), txt).v2t.sum().backward()
    vf2 = vis.zero_padding().feats.clone().requires_grad_()
    v2, t2 = Tokens(vf2, vis.mask, vis.pooled), txt.zero_padding()
    c = torch.einsum("isd,jtd->isjt", vf2, t2.feats)
    plan = aligner.plans(c.detach(), v2, t2)[0].detach()
    (c * plan).sum().backward()
    torch.testing.assert_close(vf.grad, vf2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, hp, msg", [
    ("sinkhorn", {"grad": "implicit"}, r"sinkhorn: grad must be one of \('unroll', 'plan-fixed'\)"),
    ("sinkhorn", {"tol": 0}, "sinkhorn: tol must be > 0"),
    ("partial-ot", {"marginals": "l2g"}, r"partial-ot: marginals must be one of \('global', 'uniform'\)"),
    ("omit", {"solver": "lp"}, r"omit: solver must be one of \('sinkhorn', 'exact'\)"),
    ("omit", {"marginals": "eq14"}, r"omit: marginals must be one of \('uniform', 'l2g'\)"),
])
def test_bad_options_name_the_valid_ones(name, hp, msg):
    with pytest.raises(ValueError, match=msg):  # the constructor's own check (get_aligner's: test_hparams.py)
        get_aligner_class(name)(**hp)
    key, value = next(iter(hp.items()))
    with pytest.raises(ValueError, match=f"{key}={value!r} is .* for plan '{name}'"):
        get_aligner(name, **hp)


@pytest.mark.parametrize("hp, msg", [
    ({"marginals": "global"}, r"marginals must be one of \('eq14', 'uniform', 'l2g'\)"),
    ({"solver": "lp"}, r"solver must be one of \('sinkhorn', 'exact', 'hungarian'\)"),
    ({"solver": "exact"}, "the exact solver holds its plan fixed: grad must be 'plan-fixed'"),
])
def test_the_family_class_rejects_bad_options(hp, msg):
    with pytest.raises(ValueError, match=f"transport: {msg}"):
        Transport(**hp)


@pytest.mark.parametrize("mass", [1.0, 0.6])
def test_exact_solver_failure_raises(mass):
    cost = np.array([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    a, b = np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.5, 0.5], [np.nan, 1.0]])
    tokens = np.ones((2, 2), dtype=bool)
    plans, codes = _exact._solve_pairs("exact", mass, cost, a, b, tokens, tokens)
    with pytest.raises(RuntimeError, match="exact OT solver failed on pair 1"):
        _exact._check_plans("exact", mass, plans, codes, a, b, tokens, tokens)
    _exact._check_plans("exact", mass, plans[:1], codes[:1], a[:1], b[:1], tokens[:1], tokens[:1])  # pair 0 is fine


@pytest.mark.parametrize("name, hp", [("emd", {}), ("omit", {"solver": "exact", "mass": 0.6}),
                                      ("assignment", {"exact": True})])
def test_exact_pool_equals_serial(name, hp, gen, monkeypatch):
    vis, txt = make_tokens(6, 6, 8, gen=gen), make_tokens(5, 7, 8, gen=gen)
    aligner = get_aligner(name, **hp).double()
    monkeypatch.setenv("TOKENFLOW_EXACT_WORKERS", "1")
    serial = aligner.pairwise(vis, txt)
    monkeypatch.setenv("TOKENFLOW_EXACT_WORKERS", "2")
    monkeypatch.setattr(_exact, "POOL_MIN_PAIRS", 0)
    pooled = aligner.pairwise(vis, txt)
    assert torch.equal(serial.v2t, pooled.v2t) and torch.equal(serial.t2v, pooled.t2v)
