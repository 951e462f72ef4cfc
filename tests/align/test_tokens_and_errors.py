"""Tokens container behaviour and every bad input's message."""

import pytest
import torch

from tokenflow import Tokens, get_aligner, list_aligners
from tokenflow.align import aligner_for, get_aligner_class
from tokenflow.errors import InputError

from .conftest import make_tokens


def test_indexing_keeps_batch_dimension(gen):
    tok = make_tokens(5, 4, 3, gen=gen)
    one = tok[2]
    assert len(one) == 1 and one.feats.shape == (1, 4, 3)
    torch.testing.assert_close(one.feats[0], tok.feats[2])
    assert len(tok[1:4]) == 3 and len(tok[[0, 4]]) == 2 and len(tok[-1]) == 1
    assert torch.equal(tok[torch.tensor([True, False, True, False, False])].mask, tok.mask[[0, 2]])
    with pytest.raises(IndexError):
        tok[5]


def test_to_converts_dtype_of_features_only(gen):
    tok = make_tokens(2, 4, 3, gen=gen).to(torch.bfloat16)
    assert tok.feats.dtype == tok.pooled.dtype == torch.bfloat16 and tok.mask.dtype == torch.bool
    assert tok.lengths.tolist() == tok.mask.sum(1).tolist()


def good(n=2, l=3, d=4):
    return torch.randn(n, l, d), torch.ones(n, l, dtype=torch.bool), torch.randn(n, d)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, m, p: (f[0], m, p), r"feats must have shape \[N, L, D\]"),
        (lambda f, m, p: (f.long(), m, p), "floating"),
        (lambda f, m, p: (f, m.float(), p), "bool"),
        (lambda f, m, p: (f, m[:, :2], p), r"mask must have shape \[N, L\]"),
        (lambda f, m, p: (f, m, p[:, :3]), r"pooled must have shape \[N, D\]"),
        (lambda f, m, p: (f, m, p.double()), "dtype"),
        (lambda f, m, p: (f.numpy(), m, p), "torch.Tensor"),
    ],
)
def test_malformed_tokens_are_rejected(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Tokens(*change(*good()))


@pytest.mark.parametrize("name", list_aligners())
def test_every_aligner_rejects_bad_values(name):
    aligner = aligner_for(name, dim=4)
    txt = Tokens(*good(3, 5, 4))
    f, m, p = good()
    m[1] = False
    with pytest.raises(ValueError, match=r"visual tokens: item\(s\) \[1\] have no real token"):
        aligner.pairwise(Tokens(f, m, p), txt)
    f, m, p = good()
    f[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="visual tokens: feats has NaN or Inf at item 0, real token 2"):
        aligner.pairwise(Tokens(f, m, p), txt)
    f, m, p = good()
    p[1, 0] = float("inf")
    with pytest.raises(ValueError, match="text tokens: pooled has NaN or Inf at item 1"):
        aligner.pairwise(txt, Tokens(f, m, p))
    with pytest.raises(ValueError, match="feature sizes differ between modalities: visual D=4, text D=6"):
        aligner.pairwise(txt, Tokens(*good(2, 3, 6)))
    with pytest.raises(ValueError, match="dtypes differ"):
        aligner.pairwise(txt, Tokens(*good()).to(torch.float64))
    with pytest.raises(ValueError, match="plan\\(\\) explains one pair"):
        aligner.plan(txt, txt[0])
    with pytest.raises(TypeError, match="expected two Tokens"):
        aligner.pairwise(txt, torch.zeros(3))


def test_unknown_names_list_the_choices():
    with pytest.raises(InputError, match="unknown aligner 'filip'; choose one of .*tokenflow"):
        get_aligner("filip")  # a user's mistake (exit 2), and still a ValueError for old callers
    with pytest.raises(ValueError, match=r"'temperature' is not a hyperparameter of plan 'tokenflow' \(valid: lam\)"):
        get_aligner("tokenflow", temperature=0.05)
    # get_aligner checks the declared spec; the constructors keep their own checks for direct use.
    with pytest.raises(ValueError, match="lam=0 is out of range for plan 'scan': expected a number > 0"):
        get_aligner("scan", lam=0)
    with pytest.raises(ValueError, match=r"mass=1.5 is out of range .* expected a number in \(0, 1\]"):
        get_aligner("partial-ot", mass=1.5)
    with pytest.raises(ValueError, match="lam must be > 0"):
        get_aligner_class("scan")(lam=0)
    with pytest.raises(ValueError, match="mass must be in"):
        get_aligner_class("partial-ot")(mass=1.5)
    with pytest.raises(ValueError, match="sinkhorn: eps must be > 0"):
        get_aligner_class("sinkhorn")(eps=0.0)
    with pytest.raises(ValueError, match="assignment: n_iter must be >= 1"):
        get_aligner_class("assignment")(n_iter=0)
    with pytest.raises(ValueError, match="sinkhorn: grad must be one of"):
        get_aligner_class("sinkhorn")(grad="implicit")
    with pytest.raises(ValueError, match="partial-ot: marginals must be one of"):
        get_aligner_class("partial-ot")(marginals="softmax")
    with pytest.raises(ValueError, match="chunk must be a positive"):
        get_aligner("uniform", chunk=0)


def test_learnable_rejects_too_many_tokens_as_a_user_error():
    with pytest.raises(InputError, match="at most 4 visual and 77 text tokens, got 5 .*raise max_visual"):
        get_aligner("learnable", max_visual=4).pairwise(Tokens(*good(2, 5, 3)), Tokens(*good(2, 5, 3)))
