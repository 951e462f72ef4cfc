"""Set methods (mpa, dive): the set head, both set similarities and the set losses against loops."""

import math

import numpy as np
import pytest
import torch

from tokenflow import Tokens, get_aligner
from tokenflow.losses.set_losses import global_discriminative_loss, intra_set_divergence

from .conftest import make_tokens, pad_tokens
from .naive import assignment as naive_assignment

DIM, HEADS = 8, 2


def build(name, gen, **hp):
    """A set aligner in float64 with every parameter random (the projection starts at zero)."""
    aligner = get_aligner(name, dim=DIM, heads=HEADS, **hp).double()
    with torch.no_grad():
        for p in aligner.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return aligner


def naive_head(head, feats, pooled):
    """One item: K queries attend over its real tokens [l, D] (multi-head, loops over heads)."""
    d, h = feats.shape[1], head.attn.num_heads
    hd = d // h
    mean, var = feats.mean(1, keepdim=True), feats.var(1, unbiased=False, keepdim=True)
    kv = (feats - mean) / torch.sqrt(var + head.norm.eps) * head.norm.weight + head.norm.bias
    wq, wk, wv = head.attn.in_proj_weight.split(d)
    bq, bk, bv = head.attn.in_proj_bias.split(d)
    elems = []
    for k in range(head.queries.shape[0]):
        q = head.queries[k] @ wq.T + bq
        keys, vals = kv @ wk.T + bk, kv @ wv.T + bv
        out = []
        for i in range(h):
            sl = slice(i * hd, (i + 1) * hd)
            logits = [float(q[sl] @ keys[s, sl]) / math.sqrt(hd) for s in range(len(kv))]
            mx = max(logits)
            w = [math.exp(x - mx) for x in logits]
            z = sum(w)
            out.append(sum(w[s] / z * vals[s, sl] for s in range(len(kv))))
        o = torch.cat(out) @ head.attn.out_proj.weight.T + head.attn.out_proj.bias
        e = pooled + head.proj(head.queries[k] + o)  # the slot keeps its query (residual)
        elems.append(e / e.norm())
    return torch.stack(elems)


def naive_sets(aligner, vis, txt):
    def one(head, tok, i):
        real = tok.mask[i]
        return naive_head(head, tok.feats[i][real], tok.pooled[i])

    with torch.no_grad():
        return ([one(aligner.visual_head, vis, i) for i in range(len(vis))],
                [one(aligner.text_head, txt, j) for j in range(len(txt))])


def naive_set_scores(aligner, vis, txt, pair_score):
    """[n, m] of ``pair_score(A, B)`` over the loop-written sets of every pair."""
    ref_v, ref_t = naive_sets(aligner, vis, txt)
    return torch.tensor([[pair_score(a.numpy(), b.numpy()) for b in ref_t] for a in ref_v], dtype=torch.float64)


def test_set_head_matches_per_item_attention_over_real_tokens(gen):
    aligner = build("mpa", gen)
    vis, txt = make_tokens(3, 6, DIM, gen=gen), make_tokens(4, 5, DIM, gen=gen)
    with torch.no_grad():
        sv, st = aligner.sets(vis, txt)
    ref_v, ref_t = naive_sets(aligner, vis, txt)
    for i in range(3):
        torch.testing.assert_close(sv.feats[i], ref_v[i])
    for j in range(4):
        torch.testing.assert_close(st.feats[j], ref_t[j])
    assert sv.mask.all() and sv.feats.shape == (3, 4, DIM)
    torch.testing.assert_close(sv.feats.norm(dim=-1), torch.ones(3, 4, dtype=torch.float64))


def test_sets_start_near_the_global_feature_but_spread(gen):
    torch.manual_seed(0)
    aligner = get_aligner("mpa", dim=32, heads=HEADS).double()
    vis, txt = make_tokens(3, 6, 32, gen=gen), make_tokens(4, 5, 32, gen=gen)
    with torch.no_grad():
        sv, _ = aligner.sets(vis, txt)
        s = aligner.pairwise(vis, txt)
    assert (torch.einsum("nkd,nd->nk", sv.feats, vis.pooled) > 0.85).all()  # close to CLIP's own feature
    inner = sv.feats @ sv.feats.transpose(1, 2)
    assert (inner[:, ~torch.eye(4, dtype=torch.bool)] < 0.995).all()  # not collapsed: the ISD can act
    assert (s.v2t - vis.pooled @ txt.pooled.T).abs().max() < 0.2  # near the global similarity


@pytest.mark.parametrize("hp", [{}, {"exact": True}, {"eps": 0.2, "n_iter": 10}, {"k": 3}])
def test_mpa_matches_per_pair_assignment(hp, gen):
    aligner = build("mpa", gen, **hp)
    vis, txt = make_tokens(3, 6, DIM, gen=gen), make_tokens(4, 5, DIM, gen=gen)
    s = aligner.pairwise(vis, txt)

    def mpa(a, b):
        plan, _ = naive_assignment(a, b, None, None, {k: v for k, v in hp.items() if k != "k"})
        return (a @ b.T * plan).sum()

    torch.testing.assert_close(s.v2t, naive_set_scores(aligner, vis, txt, mpa), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(s.t2v, s.v2t)


def test_dive_matches_smooth_chamfer_loops(gen):
    aligner = build("dive", gen, alpha=5.0)
    vis, txt = make_tokens(3, 6, DIM, gen=gen), make_tokens(4, 5, DIM, gen=gen)
    s = aligner.pairwise(vis, txt)

    def smooth_chamfer(a, b, k=4):
        sim = [[float(a[x] @ b[y]) for y in range(k)] for x in range(k)]
        rows = sum(math.log(sum(math.exp(5.0 * sim[x][y]) for y in range(k))) for x in range(k))
        cols = sum(math.log(sum(math.exp(5.0 * sim[x][y]) for x in range(k))) for y in range(k))
        return (rows + cols) / (2 * 5.0 * k)

    torch.testing.assert_close(s.v2t, naive_set_scores(aligner, vis, txt, smooth_chamfer), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mpa", "dive"])
def test_set_scores_ignore_padding_and_chunking(name, gen, monkeypatch):
    from tokenflow.align import sets

    aligner = build(name, gen)
    vis, txt = make_tokens(7, 5, DIM, gen=gen), make_tokens(9, 6, DIM, gen=gen)
    base = aligner.pairwise(vis, txt)
    for chunk in (1, 4, 13):
        torch.testing.assert_close(aligner.pairwise(vis, txt, chunk=chunk).v2t, base.v2t, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(sets, "SET_CHUNK_TOKENS", 13)  # sets computed 2 items at a time
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(aligner.pairwise(vis, txt).v2t.detach(), base.v2t.detach(), rtol=1e-10,
                                       atol=1e-12)

    for fill in (-7e3, float("nan")):
        padded = aligner.pairwise(pad_tokens(vis, 3, fill), pad_tokens(txt, 2, fill))
        torch.testing.assert_close(padded.v2t, base.v2t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["mpa", "dive"])
def test_set_gradcheck_through_tokens_and_heads(name, gen):
    aligner = build(name, gen, **({"n_iter": 8} if name == "mpa" else {}))
    vis, txt = make_tokens(2, 3, DIM, gen=gen), make_tokens(3, 4, DIM, gen=gen)
    q = aligner.visual_head.queries.detach().clone().requires_grad_()
    vf = vis.zero_padding().feats.clone().requires_grad_()
    tp = txt.pooled.clone().requires_grad_()

    def f(vf_, tp_, q_):
        s = torch.func.functional_call(aligner, {"visual_head.queries": q_},
                                       (Tokens(vf_, vis.mask, vis.pooled), Tokens(txt.feats, txt.mask, tp_)),
                                       {"check": False}, strict=False)
        return s.v2t

    assert torch.autograd.gradcheck(f, (vf, tp, q), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_mpa_plan_tends_to_a_permutation(gen, monkeypatch):
    aligner = build("mpa", gen, k=5)
    exact = build("mpa", gen, k=5, exact=True)
    vis, txt = make_tokens(1, 6, DIM, gen=gen), make_tokens(1, 5, DIM, gen=gen)
    with torch.no_grad():
        sv, st = aligner.sets(vis, txt)
        torch.testing.assert_close(aligner.plan(vis, txt).v2t, aligner.match.plan(sv, st).v2t)
    # Trained sets are spread out; random heads give nearly parallel elements (near-ties), so
    # the limit is checked on well-separated sets through the same plan() path.
    spread = [make_tokens(1, 5, DIM, gen=gen, min_real=5) for _ in range(2)]
    sets = tuple(Tokens(s.feats, s.mask, s.pooled) for s in spread)
    for a in (aligner, exact):
        monkeypatch.setattr(a, "sets", lambda v, t: sets)
    pe = exact.plan(vis, txt)
    assert pe.c.shape == (5, 5)
    assert torch.equal((pe.v2t > 0).sum(0), torch.ones(5, dtype=torch.long))
    gaps = []
    for eps in (0.1, 0.02, 0.004):
        aligner.match.eps, aligner.match.n_iter = eps, 5000
        gaps.append((aligner.plan(vis, txt).v2t - pe.v2t).abs().sum().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02
    assert abs(pe.score_v2t.item() - pe.c[pe.v2t > 0].mean().item()) < 1e-12  # mean of assigned pairs


def test_set_aligners_need_their_dimension():
    with pytest.raises(ValueError, match="mpa: dim .* is required"):
        get_aligner("mpa")
    with pytest.raises(ValueError, match="heads=4 does not divide the embedding size dim=10; .* one of 1, 2, 5, 10"):
        get_aligner("dive", dim=10, heads=4)
    a = get_aligner("mpa", dim=8, heads=2)
    vis = make_tokens(2, 3, 6, gen=torch.Generator().manual_seed(0), dtype=torch.float32)
    with pytest.raises(ValueError, match="built for D=8, got features of size 6"):
        a.pairwise(vis, vis)


# -- set losses --------------------------------------------------------------------------------


def test_global_discriminative_loss_matches_loops(gen):
    n, m, k = 3, 4, 2
    sv = torch.nn.functional.normalize(torch.randn(n, k, DIM, generator=gen, dtype=torch.float64), dim=-1)
    st = torch.nn.functional.normalize(torch.randn(m, k, DIM, generator=gen, dtype=torch.float64), dim=-1)
    vc = torch.randn(5, DIM, generator=gen, dtype=torch.float64)  # visual columns (batch + queue)
    tc = torch.randn(6, DIM, generator=gen, dtype=torch.float64)
    tv2t = torch.zeros(n, 6, dtype=torch.float64)
    tv2t[[0, 1, 2], [0, 1, 2]] = 1.0
    tt2v = torch.zeros(5, m, dtype=torch.float64)
    tt2v[[0, 1, 2, 3], [0, 1, 2, 3]] = 1.0
    scale = 7.0
    got = global_discriminative_loss(sv, st, vc, tc, scale, tv2t, tt2v)
    total = 0.0
    for e in range(k):
        lv = 0.0
        for i in range(n):  # visual element e of item i over the text columns' globals
            logits = [scale * float(sv[i, e] @ tc[c]) for c in range(6)]
            lse = math.log(sum(math.exp(x) for x in logits))
            lv += -sum(float(tv2t[i, c]) * (logits[c] - lse) for c in range(6))
        lt = 0.0
        for j in range(m):
            logits = [scale * float(vc[r] @ st[j, e]) for r in range(5)]
            lse = math.log(sum(math.exp(x) for x in logits))
            lt += -sum(float(tt2v[r, j]) * (logits[r] - lse) for r in range(5))
        total += (lv / n + lt / m) / 2
    assert abs(got.item() - total / k) < 1e-10


def test_intra_set_divergence_matches_loops_and_vanishes_apart(gen):
    sets = torch.nn.functional.normalize(torch.randn(3, 4, DIM, generator=gen, dtype=torch.float64), dim=-1)
    ref = np.mean([max(0.0, float(sets[i, a] @ sets[i, b]) - 0.1) for i in range(3) for a in range(4) for b in range(4)
                   if a != b])
    assert abs(intra_set_divergence(sets, 0.1).item() - ref) < 1e-12
    apart = torch.eye(DIM, dtype=torch.float64)[:4][None]  # orthogonal elements
    assert intra_set_divergence(apart, 0.0).item() == 0.0
    same = apart[:, :1].expand(1, 4, DIM)
    assert abs(intra_set_divergence(same, 0.5).item() - 0.5) < 1e-12  # collapsed: cos 1 everywhere
