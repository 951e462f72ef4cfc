import pytest
import torch

# The token makers live in tests/helpers.py; imported here for the tests of this folder.
from tests.helpers import JUNK, make_tokens, pad_tokens  # noqa: F401

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
