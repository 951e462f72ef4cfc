"""Every plan against its naive per-pair equation, and the invariances of pairwise()."""

import pytest
import torch

from tokenflow import Aligner, Tokens, get_aligner, list_aligners
from tokenflow.align import get_aligner_class, is_token_plan

from .conftest import aligner_cases, case_id, make_tokens, pad_tokens
from .naive import naive_pairwise

CASES = aligner_cases()
# Plans whose block() takes a route of its own instead of sum(c * T) from plans().
FAST_CASES = [c for c in CASES if get_aligner_class(c[0]).block is not Aligner.block]


def build(name, hp, gen=None):
    aligner = get_aligner(name, **hp)
    ref_hp = dict(hp)
    if name == "learnable":  # a non-trivial learned matrix
        with torch.no_grad():
            aligner.weight.normal_(generator=gen)
        ref_hp["weight"] = aligner.weight.detach().double()
    return aligner.double(), ref_hp


def test_registry_lists_every_plan_of_the_design():
    assert set(list_aligners()) >= {
        "uniform", "learnable", "scan", "max-avg", "max-sum", "emd", "tokenflow", "sinkhorn", "partial-ot",
        "assignment", "omit", "mpa", "dive",
    }


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pairwise_and_plan_match_naive_equations(case, gen):
    name, hp = case
    vis = make_tokens(3, 6, 8, gen=gen)
    txt = make_tokens(4, 5, 8, gen=gen)
    aligner, ref_hp = build(name, hp, gen)
    ref_v2t, ref_t2v, ref_plans = naive_pairwise(name, vis, txt, ref_hp)
    scores = aligner.pairwise(vis, txt)
    torch.testing.assert_close(scores.v2t, torch.from_numpy(ref_v2t), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(scores.t2v, torch.from_numpy(ref_t2v), rtol=1e-7, atol=1e-9)
    for i, j in [(0, 0), (2, 3), (1, 2)]:
        plan = aligner.plan(vis[i], txt[j])
        c, tv, tt = (torch.from_numpy(x) for x in ref_plans[i, j])
        l1, l2 = int(vis.mask[i].sum()), int(txt.mask[j].sum())
        assert plan.c.shape == plan.v2t.shape == plan.t2v.shape == (l1, l2)
        torch.testing.assert_close(plan.c, c)
        torch.testing.assert_close(plan.v2t, tv, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(plan.t2v, tt, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(plan.score_v2t, scores.v2t[i, j])


# Token plans with a fast route whose check lives elsewhere: wti (learned heads, built for one D) in
# tests/align/test_peers.py::test_wti_plan_explains_its_score.
FAST_ROUTE_CHECKED_ELSEWHERE = {"wti"}


def test_every_registered_plan_with_a_fast_route_is_checked_against_its_plans():
    # From the library: every registered token plan whose class overrides Aligner.block.
    fast = {name for name in list_aligners()
            if is_token_plan(name) and get_aligner_class(name).block is not Aligner.block}
    assert fast >= {"uniform", "learnable", "scan", "max-avg", "max-sum", "tokenflow"}  # the design's fast plans
    unchecked = fast - {c[0] for c in FAST_CASES} - FAST_ROUTE_CHECKED_ELSEWHERE
    assert not unchecked, f"plans whose block() is never checked against sum(c * T): {sorted(unchecked)}"


@pytest.mark.parametrize("case", FAST_CASES, ids=case_id)
def test_fast_route_equals_sum_c_times_plan(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    v = make_tokens(5, 7, 16, gen=gen).zero_padding()
    t = make_tokens(6, 9, 16, gen=gen).zero_padding()
    fast = aligner.block(v, t)
    slow = aligner.block_from_plans(v, t)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunk_size_does_not_change_scores(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    vis, txt = make_tokens(7, 5, 8, gen=gen), make_tokens(9, 6, 8, gen=gen)
    full = aligner.pairwise(vis, txt, chunk=10**9)
    for chunk in (1, 4, 13):
        part = aligner.pairwise(vis, txt, chunk=chunk)
        torch.testing.assert_close(part.v2t, full.v2t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(part.t2v, full.t2v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_extra_padding_and_nan_padding_do_not_change_scores(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    vis, txt = make_tokens(3, 5, 8, gen=gen), make_tokens(4, 6, 8, gen=gen)
    base = aligner.pairwise(vis, txt)

    for fill in (-7e3, float("nan")):
        padded = aligner.pairwise(pad_tokens(vis, 3, fill), pad_tokens(txt, 4, fill))
        torch.testing.assert_close(padded.v2t, base.v2t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(padded.t2v, base.t2v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_close_to_fp32(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    aligner = aligner.float()
    vis, txt = make_tokens(4, 6, 32, gen=gen, dtype=torch.float32), make_tokens(5, 7, 32, gen=gen, dtype=torch.float32)
    ref = aligner.pairwise(vis, txt)
    low = aligner.pairwise(vis.to(torch.bfloat16), txt.to(torch.bfloat16))
    assert low.v2t.dtype == torch.float32  # accumulated and returned in fp32
    scale = max(ref.v2t.abs().max().item(), ref.t2v.abs().max().item(), 1.0)
    for a, b in ((low.v2t, ref.v2t), (low.t2v, ref.t2v)):
        assert (a - b).abs().max().item() < 3e-2 * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_matches_cpu(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    aligner = aligner.float()
    vis, txt = make_tokens(6, 6, 32, gen=gen, dtype=torch.float32), make_tokens(5, 7, 32, gen=gen, dtype=torch.float32)
    cpu = aligner.pairwise(vis, txt)
    gpu = aligner.cuda().pairwise(vis.to("cuda"), txt.to("cuda"))
    torch.testing.assert_close(gpu.v2t.cpu(), cpu.v2t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.t2v.cpu(), cpu.t2v, rtol=1e-4, atol=1e-5)
    low = aligner.pairwise(vis.to("cuda", torch.bfloat16), txt.to("cuda", torch.bfloat16))
    assert (low.v2t.cpu() - cpu.v2t).abs().max() < 3e-2


# -- gradients ---------------------------------------------------------------------------------

# Plans whose plan is held constant (exact solvers): their gradient is the true derivative only
# when the marginals do not depend on the features. With zero global features the eq 14 weights
# vanish, the marginals fall back to uniform constants, and the envelope theorem makes the
# fixed-plan gradient exact: gradcheck then checks it for real.
FIXED_PLAN = {("emd", ()), ("assignment", (("exact", True),)), ("omit", (("solver", "exact"),)),
              ("omit", (("mass", 0.6), ("solver", "exact")))}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck(case, gen):
    name, hp = case
    hp = dict(hp)
    if name in ("sinkhorn", "partial-ot", "assignment", "omit") and not hp.get("exact") and hp.get("solver") != "exact":
        hp["n_iter"] = 8  # keeps gradcheck fast; the gradient is of the same computation
    aligner, _ = build(name, hp, gen)
    vis, txt = make_tokens(2, 3, 5, gen=gen), make_tokens(3, 4, 5, gen=gen)
    fixed = (name, tuple(sorted(case[1].items()))) in FIXED_PLAN
    vp = torch.zeros_like(vis.pooled) if fixed else vis.pooled.clone()
    tp = torch.zeros_like(txt.pooled) if fixed else txt.pooled.clone()
    vf = vis.zero_padding().feats.clone().requires_grad_()
    tf_ = txt.zero_padding().feats.clone().requires_grad_()
    inputs = [vf, tf_]
    if not fixed:
        vp.requires_grad_()
        tp.requires_grad_()
        inputs += [vp, tp]
    has_weight = name == "learnable"
    if has_weight:  # the learned matrix is checked too
        inputs.append(aligner.weight.detach().clone().requires_grad_())

    def f(*xs):
        vp_, tp_ = (vp, tp) if fixed else (xs[2], xs[3])
        vis_, txt_ = Tokens(xs[0], vis.mask, vp_), Tokens(xs[1], txt.mask, tp_)
        if has_weight:
            s = torch.func.functional_call(aligner, {"weight": xs[-1]}, (vis_, txt_), {"check": False}, strict=False)
        else:
            s = aligner.pairwise(vis_, txt_, check=False)
        return s.v2t, s.t2v

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunked_gradients_match_unchunked(case, gen):
    name, hp = case
    aligner, _ = build(name, hp, gen)
    vis, txt = make_tokens(5, 4, 6, gen=gen), make_tokens(6, 5, 6, gen=gen)
    w = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    grads = []
    for chunk in (1, 7, None):
        vf = vis.feats.clone().requires_grad_()
        tf_ = txt.feats.clone().requires_grad_()
        s = aligner.pairwise(Tokens(vf, vis.mask, vis.pooled), Tokens(tf_, txt.mask, txt.pooled), chunk=chunk)
        ((s.v2t * w).sum() + (s.t2v * w).sum()).backward()
        grads.append((vf.grad, tf_.grad))
        assert torch.isfinite(vf.grad).all() and torch.isfinite(tf_.grad).all()
        assert (vf.grad[~vis.mask] == 0).all()  # junk padding gets no gradient
    for g in grads[1:]:
        torch.testing.assert_close(g[0], grads[0][0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g[1], grads[0][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["unit-norm", "large-norm"])
def test_no_grad_route_equals_autograd_route(case, padded, scale, gen):
    """Without autograd, blocks reuse buffers, use exp2, drop the mask when nothing is padded and
    skip the softmax max-shift when unit norms bound the exponent (large norms take the shifted
    route). Every branch must give the autograd route's numbers."""
    name, hp = case
    aligner, _ = build(name, hp, gen)
    vis = make_tokens(4, 6, 8, gen=gen, min_real=1 if padded else 6)
    txt = make_tokens(5, 7, 8, gen=gen, min_real=1 if padded else 7)
    vis = Tokens(vis.feats * scale, vis.mask, vis.pooled * scale)
    txt = Tokens(txt.feats * scale, txt.mask, txt.pooled * scale)
    with torch.no_grad():
        fast = aligner.pairwise(vis, txt, chunk=6)
    vf = vis.feats.clone().requires_grad_()
    slow = aligner.pairwise(Tokens(vf, vis.mask, vis.pooled), txt, chunk=6)
    torch.testing.assert_close(fast.v2t, slow.v2t.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast.t2v, slow.t2v.detach(), rtol=1e-9, atol=1e-9)


def test_unit_norm_features_take_the_unshifted_route():
    from tokenflow.align._ops import LOG2E
    from tokenflow.align.base import BlockContext

    f = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    tok = Tokens(f, torch.ones(3, 4, dtype=torch.bool), f[:, 0])
    with torch.no_grad():
        ctx = BlockContext(tok, tok)
    assert ctx.reuse and not ctx.vis_padded
    assert ctx.exp2_is_safe(20.0 * LOG2E, 32, torch.float32)  # tokenflow's default lam
    assert not ctx.exp2_is_safe(200.0 * LOG2E, 32, torch.float32)


@pytest.mark.parametrize("dim", [1, 3])
def test_softmax_dot_backward_matches_autograd_of_the_formula(dim, gen):
    """The hand-written backward of softmax_dot against autograd through softmax * c, with a
    tensor scale (tokenflow's lam * e) and a padding bias of -inf."""
    from tokenflow.align._ops import _SoftmaxDot

    c = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    shape = [1, 1, 5, 6] if dim == 3 else [3, 4, 1, 1]
    scale = torch.randn(*shape, generator=gen, dtype=torch.float64)
    bias = torch.zeros(c.shape, dtype=torch.float64)
    index = [slice(None)] * 4
    index[dim] = -1
    bias[tuple(index)] = float("-inf")  # the last token along dim is padding
    g = torch.randn(c.sum(dim).shape, generator=gen, dtype=torch.float64)
    got = [x.clone().requires_grad_() for x in (c, scale)]
    want = [x.clone().requires_grad_() for x in (c, scale)]
    y = _SoftmaxDot.apply(got[0], 2.0 * got[1], bias, dim)
    y_ref = (torch.softmax(2.0 * want[1] * want[0] + bias, dim) * want[0]).sum(dim)
    torch.testing.assert_close(y, y_ref)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(lambda a, s: _SoftmaxDot.apply(a, 2.0 * s, bias, dim), tuple(got))
