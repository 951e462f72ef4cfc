"""Properties each plan must have, beyond matching its equation."""


import pytest
import torch

from tokenflow import Tokens, get_aligner
from tokenflow.align import get_aligner_class

from .conftest import make_tokens
from .naive import exact_ot, marginals


def one_pair(gen, l1=5, l2=7, dim=16):
    return make_tokens(1, l1, dim, gen=gen, min_real=l1), make_tokens(1, l2, dim, gen=gen, min_real=l2)


def test_tokenflow_row_and_column_sums(gen):
    aligner = get_aligner("tokenflow", lam=3.0)
    for _ in range(5):
        vis, txt = make_tokens(1, 6, 8, gen=gen), make_tokens(1, 5, 8, gen=gen)
        p = aligner.plan(vis, txt)
        l1, l2 = p.c.shape
        torch.testing.assert_close(p.v2t.sum(1), p.d / l1)  # rows of T_v2t: d_s / l1
        torch.testing.assert_close(p.t2v.sum(0), p.e / l2)  # columns of T_t2v: e_t / l2


def test_scan_plans_are_row_and_column_stochastic(gen):
    p = get_aligner("scan").plan(*one_pair(gen))
    l1, l2 = p.c.shape
    torch.testing.assert_close(p.v2t.sum(1), torch.full((l1,), 1 / l1, dtype=p.c.dtype))
    torch.testing.assert_close(p.t2v.sum(0), torch.full((l2,), 1 / l2, dtype=p.c.dtype))


def test_emd_plan_meets_marginals_and_is_optimal(gen):
    aligner = get_aligner("emd")
    for _ in range(5):
        vis, txt = make_tokens(1, 6, 8, gen=gen), make_tokens(1, 5, 8, gen=gen)
        p = aligner.plan(vis, txt)
        mu, om = vis.feats[0][vis.mask[0]].numpy(), txt.feats[0][txt.mask[0]].numpy()
        a, b = marginals(mu, om, vis.pooled[0].numpy(), txt.pooled[0].numpy())
        torch.testing.assert_close(p.v2t.sum(1), torch.from_numpy(a))
        torch.testing.assert_close(p.v2t.sum(0), torch.from_numpy(b))
        assert (p.v2t >= 0).all()
        cost = 1 - p.c.numpy()
        ref = exact_ot(cost, a, b)
        assert abs((cost * p.v2t.numpy()).sum() - (cost * ref).sum()) < 1e-9  # same optimal cost


def test_emd_all_negative_weights_fall_back_to_uniform_mass(gen):
    vis, txt = one_pair(gen)
    vis = Tokens(vis.feats, vis.mask, -txt.feats[:, 0] * 0)  # mu_bar = 0 -> e = 0 everywhere
    p = get_aligner("emd").plan(vis, txt)
    torch.testing.assert_close(p.v2t.sum(0), torch.full((p.c.shape[1],), 1 / p.c.shape[1], dtype=p.c.dtype))


def test_sinkhorn_meets_marginals_and_tends_to_emd(gen):
    vis, txt = one_pair(gen)
    emd = get_aligner("emd").plan(vis, txt)
    gaps = []
    for eps in (0.2, 0.05, 0.01):
        p = get_aligner("sinkhorn", eps=eps, n_iter=3000).plan(vis, txt)
        torch.testing.assert_close(p.v2t.sum(1), emd.v2t.sum(1), atol=1e-6, rtol=0)
        torch.testing.assert_close(p.v2t.sum(0), emd.v2t.sum(0), atol=1e-9, rtol=0)
        gaps.append((p.v2t - emd.v2t).abs().sum().item())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05


def test_partial_ot_moves_mass_m_within_marginals(gen):
    vis, txt = one_pair(gen)
    full = get_aligner("sinkhorn", eps=0.05, n_iter=500).plan(vis, txt)
    for mass in (0.3, 0.7, 1.0):
        p = get_aligner("partial-ot", mass=mass, n_iter=500).plan(vis, txt)
        assert abs(p.v2t.sum().item() - mass) < 1e-6
        assert (p.v2t.sum(1) <= full.v2t.sum(1) + 1e-6).all()  # never more than a token's mass
        assert (p.v2t.sum(0) <= full.v2t.sum(0) + 1e-6).all()
    torch.testing.assert_close(p.v2t, full.v2t)  # mass 1 is plain Sinkhorn


def test_partial_ot_drops_the_least_similar_token(gen):
    vis, txt = one_pair(gen, l1=4, l2=4)
    feats = vis.feats.clone()
    feats[0, 0] = -txt.feats[0].mean(0)  # a visual token unlike every word
    feats[0, 0] /= feats[0, 0].norm()
    vis = Tokens(feats, vis.mask, vis.pooled)
    p = get_aligner("partial-ot", mass=0.75, marginals="uniform", eps=0.01, n_iter=2000).plan(vis, txt)
    assert p.v2t.sum(1)[0] < 0.02  # it keeps (almost) none of its mass


def test_assignment_tends_to_a_permutation(gen):
    vis, txt = one_pair(gen, l1=5, l2=5)
    exact = get_aligner("assignment", exact=True).plan(vis, txt)
    assert torch.equal((exact.v2t > 0).sum(0), torch.ones(5, dtype=torch.long))  # one pair per column
    soft = get_aligner("assignment", eps=0.005, n_iter=3000).plan(vis, txt)
    torch.testing.assert_close(soft.v2t, exact.v2t, atol=2e-3, rtol=0)
    assert abs(exact.score_v2t.item() - exact.c[exact.v2t > 0].mean().item()) < 1e-12  # mean of assigned pairs


def test_max_sum_is_max_avg_times_lengths(gen):
    vis, txt = make_tokens(3, 6, 8, gen=gen), make_tokens(4, 5, 8, gen=gen)
    avg, tot = get_aligner("max-avg").pairwise(vis, txt), get_aligner("max-sum").pairwise(vis, txt)
    l1, l2 = vis.lengths.double()[:, None], txt.lengths.double()[None]
    torch.testing.assert_close(tot.v2t, avg.v2t * l1)
    torch.testing.assert_close(tot.t2v, avg.t2v * l2)


def test_uniform_is_mean_token_dot_product(gen):
    vis, txt = make_tokens(3, 6, 8, gen=gen), make_tokens(4, 5, 8, gen=gen)
    s = get_aligner("uniform").pairwise(vis, txt)
    mv = torch.stack([vis.feats[i][vis.mask[i]].mean(0) for i in range(3)])
    mt = torch.stack([txt.feats[j][txt.mask[j]].mean(0) for j in range(4)])
    torch.testing.assert_close(s.v2t, mv @ mt.T)
    torch.testing.assert_close(s.t2v, s.v2t)


def test_learnable_starts_uniform_and_learns(gen):
    vis, txt = make_tokens(3, 6, 8, gen=gen), make_tokens(4, 5, 8, gen=gen)
    learn = get_aligner("learnable", max_visual=6, max_text=5).double()
    torch.testing.assert_close(learn.pairwise(vis, txt).v2t, get_aligner("uniform").pairwise(vis, txt).v2t)
    s = learn.pairwise(vis, txt)
    s.v2t.sum().backward()
    assert learn.weight.grad is not None and learn.weight.grad.abs().sum() > 0


def test_scores_direction_selector(gen):
    vis, txt = make_tokens(2, 4, 8, gen=gen), make_tokens(3, 4, 8, gen=gen)
    s = get_aligner("tokenflow").pairwise(vis, txt)
    assert s.direction("v2t") is s.v2t and s.direction("t2v") is s.t2v
    torch.testing.assert_close(s.direction("mean"), (s.v2t + s.t2v) / 2)
    with pytest.raises(ValueError, match="direction"):
        s.direction("both")


def test_large_collection_in_small_blocks_matches_one_block(gen):
    vis, txt = make_tokens(40, 6, 8, gen=gen, dtype=torch.float32), make_tokens(33, 5, 8, gen=gen, dtype=torch.float32)
    for name in ("tokenflow", "scan", "max-avg"):
        a = get_aligner(name)
        torch.testing.assert_close(a.pairwise(vis, txt, chunk=17).t2v, a.pairwise(vis, txt, chunk=10**6).t2v)


# -- OMIT --------------------------------------------------------------------------------------


def test_omit_entropic_partial_tends_to_the_exact_partial_plan(gen):
    vis, txt = one_pair(gen)
    exact = get_aligner("omit", solver="exact", mass=0.6).plan(vis, txt)
    assert abs(exact.v2t.sum().item() - 0.6) < 1e-9
    assert (exact.v2t.sum(1) <= 1 / 5 + 1e-12).all() and (exact.v2t.sum(0) <= 1 / 7 + 1e-12).all()
    gaps = []
    for eps in (0.1, 0.02, 0.004):
        p = get_aligner("omit", mass=0.6, eps=eps, n_iter=5000).plan(vis, txt)
        assert abs(p.v2t.sum().item() - 0.6) < 1e-5
        gaps.append((p.v2t - exact.v2t).abs().sum().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02


def test_omit_partial_leaves_an_unrelated_fragment_out(gen):
    vis, txt = one_pair(gen, l1=4, l2=4)
    feats = vis.feats.clone()
    feats[0, 0] = -txt.feats[0].mean(0)  # a fragment unlike every word
    feats[0, 0] /= feats[0, 0].norm()
    vis = Tokens(feats, vis.mask, vis.pooled)
    plain = get_aligner("omit", solver="exact").plan(vis, txt)
    assert abs(plain.v2t.sum(1)[0].item() - 0.25) < 1e-9  # balanced transport must move its mass
    partial = get_aligner("omit", solver="exact", mass=0.75).plan(vis, txt)
    assert partial.v2t.sum(1)[0].item() < 1e-9  # partial transport drops it
    l2g = get_aligner("omit", marginals="l2g").plan(vis, txt)
    assert l2g.v2t.sum(1)[0].item() < 0.5 * l2g.v2t.sum(1)[1:].min().item()  # little local-to-global mass


def test_omit_default_is_the_released_plain_version(gen):
    aligner = get_aligner("omit")
    assert aligner.hparams() == {"marginals": "uniform", "mass": 1.0, "solver": "sinkhorn", "eps": 0.05,
                                 "n_iter": 3, "tau": 0.1}
    vis, txt = one_pair(gen)
    p = aligner.plan(vis, txt)
    torch.testing.assert_close(p.v2t.sum(0), torch.full((7,), 1 / 7, dtype=p.c.dtype))  # last update: columns


@pytest.mark.parametrize("hp, msg", [({"marginals": "global"}, "marginals"), ({"solver": "lp"}, "solver"),
                                     ({"mass": 0}, "mass"), ({"tau": 0}, "tau"), ({"eps": -1}, "eps")])
def test_omit_rejects_bad_options(hp, msg):
    with pytest.raises(ValueError, match=f"{msg}=.* for plan 'omit'"):
        get_aligner("omit", **hp)
    with pytest.raises(ValueError, match=f"omit: {msg}"):
        get_aligner_class("omit")(**hp)
