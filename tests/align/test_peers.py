"""Peer methods with learned heads: DRL's weighted token-wise interaction (``wti``) and X-CLIP's
multi-grained similarity (``xclip``), each against a per-pair loop written from the paper's
equations (tests/align/naive.py), plus the invariances the generic plan tests check."""

import numpy as np
import pytest
import torch

from tokenflow import Tokens, get_aligner, list_aligners
from tokenflow.align import aligner_for, get_aligner_class, is_token_plan
from tokenflow.errors import InputError
from tokenflow.losses.infonce import contrastive_loss

from .conftest import PEER_PLANS, case_id, make_tokens, pad_tokens
from .naive import naive_peer_scores, wti, wti_score, xclip_score

DIM = 8
CASES = [("wti", {}), ("wti", {"layers": 1}), ("wti", {"layers": 3}), ("xclip", {}),
         ("xclip", {"temperature": 0.1, "max_visual": 9, "max_text": 9})]
SCORE = {"wti": wti_score, "xclip": xclip_score}


def build(name, hp, gen, dim=DIM):
    """The aligner in float64 with every learned weight random (X-CLIP's matrices: identity + noise)."""
    aligner = aligner_for(name, hp, dim=dim).double()
    with torch.no_grad():
        for pname, p in aligner.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.copy_(p + 0.3 * noise if name == "xclip" else 0.7 * noise)
    return aligner


def reference_hp(aligner):
    """The learned weights as numpy arrays, for the naive loops."""
    def mlp(seq):
        def bias(m):
            return np.zeros(m.out_features) if m.bias is None else m.bias.detach().numpy()

        return [(m.weight.detach().numpy(), bias(m)) for m in seq if isinstance(m, torch.nn.Linear)]

    if aligner.name == "wti":
        return {"visual_mlp": mlp(aligner.visual_weight), "text_mlp": mlp(aligner.text_weight)}
    return {"tau": aligner.temperature, **{k: p.detach().numpy() for k, p in aligner.named_parameters()}}


def test_registered_with_dim_from_the_backbone():
    assert set(PEER_PLANS) <= set(list_aligners())
    assert is_token_plan("wti") and not is_token_plan("xclip")
    assert aligner_for("wti", dim=12).hparams() == {"dim": 12, "layers": 2}
    assert aligner_for("xclip", {"temperature": 0.05}, dim=12).hparams() == {
        "dim": 12, "max_visual": 256, "max_text": 77, "temperature": 0.05}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scores_match_the_papers_equations(case, gen):
    name, hp = case
    aligner = build(name, hp, gen)
    vis, txt = make_tokens(3, 6, DIM, gen=gen, normalise=False), make_tokens(4, 5, DIM, gen=gen, normalise=False)
    ref = torch.from_numpy(naive_peer_scores(SCORE[name], vis, txt, reference_hp(aligner)))
    scores = aligner.pairwise(vis, txt)
    torch.testing.assert_close(scores.v2t, ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(scores.t2v, ref, rtol=1e-7, atol=1e-9)  # one symmetric score


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_wti_plan_explains_its_score(layers, gen):
    aligner = build("wti", {"layers": layers}, gen)
    vis, txt = make_tokens(3, 6, DIM, gen=gen, normalise=False), make_tokens(4, 5, DIM, gen=gen, normalise=False)
    scores = aligner.pairwise(vis, txt)
    hp = reference_hp(aligner)
    for i, j in [(0, 0), (2, 3), (1, 2)]:
        plan = aligner.plan(vis[i], txt[j])
        mu, om = vis.feats[i][vis.mask[i]].numpy(), txt.feats[j][txt.mask[j]].numpy()
        tv, tt = wti(mu, om, None, None, hp)
        torch.testing.assert_close(plan.c, torch.from_numpy(mu @ om.T))
        torch.testing.assert_close(plan.v2t, torch.from_numpy(tv), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(plan.t2v, torch.from_numpy(tt), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(plan.score_v2t, scores.v2t[i, j])
    # The fast route (maxima of cosines, never T) equals sum(c * T) from plans().
    v, t = make_tokens(5, 7, DIM, gen=gen).zero_padding(), make_tokens(6, 9, DIM, gen=gen).zero_padding()
    for fast, slow in zip(aligner.block(v, t), aligner.block_from_plans(v, t)):
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_wti_with_equal_token_weights_is_the_mean_of_both_max_avg_directions(gen):
    aligner = aligner_for("wti", dim=DIM).double()
    with torch.no_grad():  # a zero last layer scores every token alike: weights 1/l
        aligner.visual_weight[-1].weight.zero_()
        aligner.text_weight[-1].weight.zero_()
    vis, txt = make_tokens(3, 6, DIM, gen=gen), make_tokens(4, 5, DIM, gen=gen)  # unit norm: c is the cosine
    filip = get_aligner("max-avg").pairwise(vis, txt)
    torch.testing.assert_close(aligner.pairwise(vis, txt).v2t, 0.5 * (filip.v2t + filip.t2v))


def test_xclip_has_no_token_plan(gen):
    aligner = aligner_for("xclip", dim=DIM)
    vis = make_tokens(2, 3, DIM, gen=gen, dtype=torch.float32)
    txt = make_tokens(2, 4, DIM, gen=gen, dtype=torch.float32)
    with pytest.raises(ValueError, match="xclip: .* not a weighted sum of token similarities"):
        aligner.plan(vis[0], txt[0])
    with pytest.raises(ValueError, match=r"plan\(\) explains one pair"):
        aligner.plan(vis, txt[0])


def test_xclip_at_initialisation_uses_no_position_mixing(gen):
    """Identity matrices: AOSM is the plain softmax-weighted sum, and the video-sentence term
    the global cosine."""
    aligner = aligner_for("xclip", dim=DIM).double()
    vis, txt = make_tokens(3, 6, DIM, gen=gen), make_tokens(4, 5, DIM, gen=gen)
    hp = {"tau": 0.01, **{k: np.eye(p.shape[0]) for k, p in aligner.named_parameters()}}
    ref = torch.from_numpy(naive_peer_scores(xclip_score, vis, txt, hp))
    torch.testing.assert_close(aligner.pairwise(vis, txt).v2t, ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunk_size_does_not_change_scores(case, gen):
    aligner = build(*case, gen)
    vis, txt = make_tokens(7, 5, DIM, gen=gen), make_tokens(9, 6, DIM, gen=gen)
    full = aligner.pairwise(vis, txt, chunk=10**9)
    for chunk in (1, 4, 13):
        part = aligner.pairwise(vis, txt, chunk=chunk)
        torch.testing.assert_close(part.v2t, full.v2t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(part.t2v, full.t2v, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the no-grad route reuses buffers across blocks
        part = aligner.pairwise(vis, txt, chunk=4)
    torch.testing.assert_close(part.v2t, full.v2t.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_extra_padding_and_nan_padding_do_not_change_scores(case, gen):
    aligner = build(*case, gen)
    vis, txt = make_tokens(3, 5, DIM, gen=gen), make_tokens(4, 6, DIM, gen=gen)
    base = aligner.pairwise(vis, txt)

    for fill in (-7e3, float("nan")):
        padded = aligner.pairwise(pad_tokens(vis, 3, fill), pad_tokens(txt, 3, fill))
        torch.testing.assert_close(padded.v2t, base.v2t, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(padded.t2v, base.t2v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_close_to_fp32(case, gen):
    aligner = build(*case, gen, dim=32).float()
    vis = make_tokens(4, 6, 32, gen=gen, dtype=torch.float32)
    txt = make_tokens(5, 7, 32, gen=gen, dtype=torch.float32)
    ref = aligner.pairwise(vis, txt)
    low = aligner.pairwise(vis.to(torch.bfloat16), txt.to(torch.bfloat16))
    assert low.v2t.dtype == torch.float32
    assert (low.v2t - ref.v2t).abs().max().item() < 3e-2 * max(ref.v2t.abs().max().item(), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_matches_cpu(case, gen):
    aligner = build(*case, gen, dim=32).float()
    vis = make_tokens(6, 6, 32, gen=gen, dtype=torch.float32)
    txt = make_tokens(5, 7, 32, gen=gen, dtype=torch.float32)
    cpu = aligner.pairwise(vis, txt)
    gpu = aligner.cuda().pairwise(vis.to("cuda"), txt.to("cuda"))
    torch.testing.assert_close(gpu.v2t.cpu(), cpu.v2t, rtol=1e-4, atol=1e-5)
    low = aligner.pairwise(vis.to("cuda", torch.bfloat16), txt.to("cuda", torch.bfloat16))
    assert (low.v2t.cpu() - cpu.v2t).abs().max() < 3e-2


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_through_features_and_learned_weights(case, gen):
    name, hp = case
    hp = {**hp, "max_visual": 4, "max_text": 5} if name == "xclip" else hp  # fewer weights to perturb
    aligner = build(name, hp, gen, dim=4)
    vis, txt = make_tokens(2, 3, 4, gen=gen), make_tokens(3, 4, 4, gen=gen)
    names = [k for k, _ in aligner.named_parameters()]
    feats = [vis.zero_padding().feats, txt.zero_padding().feats, vis.pooled, txt.pooled]
    inputs = [x.clone().requires_grad_() for x in feats] + [
        p.detach().clone().requires_grad_() for _, p in aligner.named_parameters()]

    def f(vf, tf_, vp, tp, *params):
        vis_, txt_ = Tokens(vf, vis.mask, vp), Tokens(tf_, txt.mask, tp)
        s = torch.func.functional_call(aligner, dict(zip(names, params)), (vis_, txt_), {"check": False})
        return s.v2t, s.t2v

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunked_gradients_match_unchunked(case, gen):
    aligner = build(*case, gen)
    vis, txt = make_tokens(5, 4, DIM, gen=gen), make_tokens(6, 5, DIM, gen=gen)
    w = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    grads = []
    for chunk in (1, 7, None):
        aligner.zero_grad()
        vf, tf_ = vis.feats.clone().requires_grad_(), txt.feats.clone().requires_grad_()
        s = aligner.pairwise(Tokens(vf, vis.mask, vis.pooled), Tokens(tf_, txt.mask, txt.pooled), chunk=chunk)
        ((s.v2t * w).sum() + (s.t2v * w).sum()).backward()
        assert torch.isfinite(vf.grad).all() and (vf.grad[~vis.mask] == 0).all()  # junk padding gets none
        assert (tf_.grad[~txt.mask] == 0).all()
        grads.append([vf.grad, tf_.grad] + [p.grad.clone() for p in aligner.parameters()])
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", PEER_PLANS)
def test_contrastive_training_reaches_the_learned_weights(name, gen):
    """A few AdamW steps of the in-batch InfoNCE loss: every learned weight gets a gradient
    (X-CLIP's position matrices only where positions exist) and the loss goes down."""
    torch.manual_seed(0)
    aligner = aligner_for(name, {"max_visual": 6, "max_text": 5} if name == "xclip" else {}, dim=DIM)
    vis = make_tokens(6, 6, DIM, gen=gen, dtype=torch.float32)
    txt = make_tokens(6, 5, DIM, gen=gen, dtype=torch.float32)
    opt = torch.optim.AdamW(aligner.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        s = aligner.pairwise(vis, txt)
        loss = contrastive_loss(s.v2t, s.t2v, 20.0)
        loss.backward()
        for pname, p in aligner.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_hyperparameters_name_the_valid_values(gen):
    with pytest.raises(ValueError, match="wti: dim .* is required"):
        get_aligner("wti")
    with pytest.raises(ValueError, match="xclip: dim .* is required"):
        get_aligner("xclip")
    with pytest.raises(ValueError, match="layers=4 is not one of the choices for plan 'wti': expected one of 1, 2, 3"):
        get_aligner("wti", dim=4, layers=4)
    with pytest.raises(ValueError, match="wti: layers must be one of 1, 2, 3, got 4"):
        get_aligner_class("wti")(dim=4, layers=4)
    with pytest.raises(ValueError, match="xclip: temperature must be > 0, got 0"):
        get_aligner_class("xclip")(dim=4, temperature=0)
    with pytest.raises(ValueError, match="xclip: max_text must be >= 1, got 0"):
        get_aligner_class("xclip")(dim=4, max_text=0)
    with pytest.raises(ValueError, match=r"'lam' is not a hyperparameter of plan 'wti' \(valid: layers\)"):
        get_aligner("wti", dim=4, lam=1.0)
    with pytest.raises(ValueError, match=r"'tau' is not .* \(valid: max_text, max_visual, temperature\)"):
        get_aligner("xclip", dim=4, tau=0.1)
    vis, txt = make_tokens(2, 3, 6, gen=gen), make_tokens(2, 4, 6, gen=gen)
    for name in PEER_PLANS:
        with pytest.raises(ValueError, match=f"{name}: built for D=4, got features of size 6"):
            aligner_for(name, dim=4).double().pairwise(vis, txt)
    with pytest.raises(InputError, match="at most 2 visual and 77 text tokens, got 3 and 4"):  # the user's to fix
        get_aligner("xclip", dim=6, max_visual=2).double().pairwise(vis, txt)
