import pytest
import torch

from tokenflow import Tokens

JUNK = 1e3  # padding is filled with large junk values: any leak into a score shows


def make_tokens(n, length, dim, *, gen, dtype=torch.float64, min_real=1, normalise=True, junk=JUNK):
    """Random tokens with real positions scattered anywhere and junk in the padding."""
    feats = torch.randn(n, length, dim, generator=gen, dtype=torch.float64)
    pooled = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    if normalise:  # CLIP-like: unit-norm features
        feats = feats / feats.norm(dim=-1, keepdim=True)
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        k = int(torch.randint(min_real, length + 1, (1,), generator=gen))
        mask[i, torch.randperm(length, generator=gen)[:k]] = True
    feats = torch.where(mask[..., None], feats, torch.full_like(feats, junk))
    return Tokens(feats.to(dtype), mask, pooled.to(dtype))


def pad_tokens(tok, extra, fill):
    """``tok`` with ``extra`` padding positions appended, their features all ``fill``."""
    n, _, dim = tok.feats.shape
    feats = torch.cat([tok.feats, torch.full((n, extra, dim), fill, dtype=tok.dtype)], 1)
    mask = torch.cat([tok.mask, torch.zeros(n, extra, dtype=torch.bool)], 1)
    return Tokens(feats, mask, tok.pooled)


#: Peer methods with learned heads (built for one feature size D): tests/align/test_peers.py.
PEER_PLANS = ("wti", "xclip")


# (name, hyperparameters) cases: every registered plan at its defaults plus notable variants.
def aligner_cases():
    from tokenflow import list_aligners
    from tokenflow.align import is_token_plan

    # Set methods (mpa, dive) score learned sets, not token pairs: tests/align/test_sets.py.
    cases = [(name, {}) for name in list_aligners() if is_token_plan(name)]
    # Plans with learned heads over the features are built for one D and need their weights in
    # the naive reference: tests/align/test_peers.py runs the same checks on them.
    cases = [case for case in cases if case[0] not in PEER_PLANS]
    cases += [
        ("scan", {"lam": 2.0}),
        ("tokenflow", {"lam": 5.0}),
        ("sinkhorn", {"eps": 0.1, "n_iter": 30}),
        ("partial-ot", {"mass": 0.6, "marginals": "uniform"}),
        ("assignment", {"exact": True}),
        ("omit", {"marginals": "l2g"}),
        ("omit", {"marginals": "l2g", "mass": 0.6, "n_iter": 20}),
        ("omit", {"mass": 0.7, "n_iter": 10}),
        ("omit", {"solver": "exact"}),
        ("omit", {"solver": "exact", "mass": 0.6}),
    ]
    return cases


def case_id(case):
    name, hp = case
    return name + "".join(f"-{k}={v}" for k, v in hp.items())


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
