"""Test-time normalisation of a retrieval score matrix: DSL, inverted softmax, QB-Norm.

These re-weight the scores of every gallery item by how strongly *other* queries want it, which
damps "hubs" (items that come out on top for many queries). They change the numbers a paper
reports a lot, and not every paper says it used one, so :func:`tokenflow.eval.evaluate.evaluate`
keeps the plain metrics in ``report["metrics"]`` and the normalised ones apart, in
``report["metrics_test_norm"]`` with the method and its temperature.

Every function takes ``sim`` [Q, I]: one row per query, one column per gallery item (text->visual:
``sim_t2v.T``; visual->text: ``sim_v2t``), and returns a [Q, I] matrix whose rows rank the items
as the method does (the values need not be the method's own scale: ranks are what is measured).

- ``dsl``, dual softmax (CAMoE, Cheng et al. 2021, "Improving Video-Text Retrieval by Multi-Stream
  Corpus Alignment and Dual Softmax Loss", eq 8 at inference): a prior from the softmax over the
  queries (the other axis) multiplies the score, ``s'(q, i) = s(q, i) * softmax_q'(s(q', i) / T)``.
- ``isl``, inverted softmax (Smith et al. 2017, "Offline bilingual word vectors, orthogonal
  transformations and the inverted softmax"; Bogolin et al. 2022 eq 2):
  ``s'(q, i) = exp(s(q, i) / T) / sum_b exp(s(b, i) / T)`` with the sum over a bank of queries;
  here (no bank given) the evaluation queries themselves.
- ``qbnorm``, QB-Norm with the dynamic inverted softmax (Bogolin et al. 2022, "Cross Modal
  Retrieval with Querybank Normalisation", eq 4): the bank is made of *training* captions, never
  of test queries. The activation set A holds the gallery items that are in the top-k of some bank
  query; a test query whose own top-1 item is in A gets the inverted softmax over the bank, any
  other query keeps its plain scores. This follows the paper and its official code
  (ioanacroi/qb-norm, ``k=1``, ``beta = 1/T = 20``): the choice is per query, so a row never mixes
  the two scales.

``dsl`` and ``isl`` are transductive: they read every test query at once. ``qbnorm`` reads only
the bank and the query being answered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .metrics import retrieval_metrics

__all__ = ["DEFAULT_TEMPERATURE", "TEST_NORMS", "apply_test_norm", "dual_softmax", "inverted_softmax",
           "normalised_metrics", "querybank_norm"]

TEST_NORMS = ("dsl", "isl", "qbnorm")
LABELS = {"dsl": "DSL", "isl": "ISL", "qbnorm": "QB-Norm"}
# DSL: CLIP's logit scale 100 on cosine-like scores; IS and QB-Norm: the QB-Norm paper's beta = 20.
DEFAULT_TEMPERATURE = {"dsl": 0.01, "isl": 0.05, "qbnorm": 0.05}


def _check(sim: Tensor, temperature: float) -> None:
    if sim.dim() != 2:
        raise ValueError(f"sim must be [queries, items], got shape {tuple(sim.shape)}")
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}")


def dual_softmax(sim: Tensor, temperature: float = DEFAULT_TEMPERATURE["dsl"]) -> Tensor:
    """DSL: ``s(q, i) * softmax over the queries q' of s(q', i) / T``; [Q, I] -> [Q, I]."""
    _check(sim, temperature)
    sim = sim.double()
    return sim * torch.softmax(sim / temperature, dim=0)


def inverted_softmax(sim: Tensor, temperature: float = DEFAULT_TEMPERATURE["isl"],
                     bank: Tensor | None = None) -> Tensor:
    """Inverted softmax, in log form: ``s(q, i) / T - log sum_b exp(s(b, i) / T)`` ([Q, I]).

    The log of ``exp(s / T) / sum_b exp(s_b / T)``, so the same ranking without overflow.
    ``bank``: [B, I] scores of the bank queries against the same items; default ``sim`` itself.
    """
    _check(sim, temperature)
    bank = sim if bank is None else bank
    if bank.dim() != 2 or bank.shape[1] != sim.shape[1]:
        raise ValueError(f"bank must be [bank queries, {sim.shape[1]} items], got {tuple(bank.shape)}")
    return sim.double() / temperature - torch.logsumexp(bank.double() / temperature, dim=0, keepdim=True)


def querybank_norm(sim: Tensor, bank: Tensor, temperature: float = DEFAULT_TEMPERATURE["qbnorm"],
                   k: int = 1) -> Tensor:
    """QB-Norm, dynamic inverted softmax: rows whose top-1 item is a hub get :func:`inverted_softmax`
    over ``bank`` ([B, I], training captions), the others keep ``sim``. Hubs: the items in the
    top-``k`` of some bank query."""
    _check(sim, temperature)
    if bank.dim() != 2 or bank.shape[1] != sim.shape[1] or bank.shape[0] == 0:
        raise ValueError(f"bank must be [bank queries >= 1, {sim.shape[1]} items], got {tuple(bank.shape)}")
    if not 1 <= k <= sim.shape[1]:
        raise InputError(f"k must be in 1..{sim.shape[1]}, got {k}")
    hubs = torch.zeros(sim.shape[1], dtype=torch.bool)
    hubs[bank.topk(k, dim=1).indices.flatten().cpu()] = True
    normalise = hubs[sim.argmax(dim=1).cpu()].to(sim.device)
    return torch.where(normalise[:, None], inverted_softmax(sim, temperature, bank), sim.double())


def apply_test_norm(method: str, sim: Tensor, *, temperature: float | None = None, bank: Tensor | None = None,
                    k: int = 1) -> Tensor:
    """Apply ``method`` (one of :data:`TEST_NORMS`) to ``sim`` [Q, I]; ``bank`` only for qbnorm."""
    if method not in TEST_NORMS:
        raise ValueError(f"unknown test-time normalisation {method!r}; choose one of {', '.join(TEST_NORMS)}")
    t = DEFAULT_TEMPERATURE[method] if temperature is None else temperature
    if method == "dsl":
        return dual_softmax(sim, t)
    if method == "isl":
        return inverted_softmax(sim, t)
    if bank is None:
        raise ValueError("qbnorm needs a query bank: scores of training captions against the gallery")
    return querybank_norm(sim, bank, t, k)


def normalised_metrics(method: str, sim_v2t: Tensor, sim_t2v: Tensor, positives: Tensor, *,
                       temperature: float | None = None, bank_t2v: Tensor | None = None, k: int = 1,
                       bank_info: dict | None = None) -> dict:
    """The ``metrics_test_norm`` block of a report: method, settings and metrics.

    ``sim_v2t``, ``sim_t2v``, ``positives``: [N_visual, N_text]. ``bank_t2v`` [B, N_visual]: bank
    captions scored against the visual items (qbnorm). QB-Norm's bank holds captions, so only
    text->visual is normalised with it; visual->text is then left out of the block.
    """
    t = DEFAULT_TEMPERATURE[method] if temperature is None else temperature
    block: dict = {"method": method, "label": f"{LABELS[method]}, test-time norm", "temperature": t,
                   "transductive": method in ("dsl", "isl")}
    block["t2v"] = retrieval_metrics(apply_test_norm(method, sim_t2v.T, temperature=t, bank=bank_t2v, k=k),
                                     positives.T)
    if method == "qbnorm":
        block.update(k=k, bank=bank_info or {"queries": int(bank_t2v.shape[0])},
                     note="text->visual only: the query bank holds training captions")
    else:
        block["v2t"] = retrieval_metrics(apply_test_norm(method, sim_v2t, temperature=t), positives)
    return block
