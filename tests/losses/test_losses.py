"""InfoNCE and momentum-distillation pieces against per-query sums written from the equations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.losses.naive import naive_loss
from tokenflow import Tokens
from tokenflow.losses import FeatureQueue, contrastive_loss, distill_targets, ema_update, id_targets


def test_contrastive_loss_matches_the_equations_with_rectangular_scores():
    g = torch.Generator().manual_seed(0)
    sv, st = torch.rand(3, 7, generator=g, dtype=torch.float64), torch.rand(7, 4, generator=g, dtype=torch.float64)
    yv = torch.softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), 1)
    yt = torch.softmax(torch.randn(7, 4, generator=g, dtype=torch.float64), 0)
    got = contrastive_loss(sv, st, 5.0, yv, yt)
    assert float(got) == pytest.approx(naive_loss(sv.tolist(), st.tolist(), 5.0, yv.tolist(), yt.tolist()), rel=1e-6)


def test_identity_targets_are_clip_in_batch_loss_and_s_v_s_t_feed_their_own_sides():
    g = torch.Generator().manual_seed(1)
    sv, st = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    want = naive_loss(sv.tolist(), st.tolist(), 2.0, eye.tolist(), eye.tolist())
    assert float(contrastive_loss(sv, st, 2.0)) == pytest.approx(want, rel=1e-6)
    # swapping the matrices changes the loss: s^V must not feed the text side
    assert float(contrastive_loss(st, sv, 2.0)) != pytest.approx(want, rel=1e-3)


def test_contrastive_loss_gradcheck():
    g = torch.Generator().manual_seed(2)
    sv = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    st = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    yv = id_targets(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 0, 7])).double()
    yt = id_targets(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 0, 7])).T.double()
    assert torch.autograd.gradcheck(lambda a, b, s: contrastive_loss(a, b, s, yv, yt), (sv, st, scale))


def test_id_targets_share_mass_between_positives_and_need_one():
    t = id_targets(torch.tensor([4, 9]), torch.tensor([4, 9, 4, 5]))
    assert t.tolist() == [[0.5, 0, 0.5, 0], [0, 1, 0, 0]]
    with pytest.raises(ValueError, match="no positive"):
        id_targets(torch.tensor([3]), torch.tensor([1, 2]))


def test_distill_targets_mix_teacher_softmax_with_labels():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = id_targets(torch.arange(3), torch.tensor([0, 1, 2, 5, 6, 7])).double()
    got = distill_targets(s, y, 4.0, 0.4, dim=1)
    for i in range(3):
        z = sum(math.exp(4.0 * float(s[i, j])) for j in range(6))
        for j in range(6):
            want = 0.4 * math.exp(4.0 * float(s[i, j])) / z + 0.6 * float(y[i, j])
            assert float(got[i, j]) == pytest.approx(want, rel=1e-9)
    cols = distill_targets(s.T, y.T, 4.0, 0.4, dim=0)  # text->visual: columns are queries
    assert torch.allclose(cols, got.T)
    assert torch.allclose(got.sum(1), torch.ones(3, dtype=got.dtype))
    with pytest.raises(ValueError, match="alpha"):
        distill_targets(s, y, 1.0, 1.5)


def test_ema_update():
    student = torch.nn.Linear(3, 2)
    teacher = copy.deepcopy(student)
    before = teacher.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.95)
    assert torch.allclose(teacher.weight, 0.95 * before + 0.05 * student.weight)
    ema_update(teacher, student, 0.0)
    assert torch.equal(teacher.weight, student.weight)


def _tok(n, length, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, length, d, generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[:, -1] = False
    return Tokens(feats, mask, torch.randn(n, d, generator=g))


def test_queue_keeps_the_newest_samples_and_grows_its_token_axis():
    q = FeatureQueue(5)
    assert q.tokens() is None and len(q) == 0
    a, b = _tok(3, 4, seed=1), _tok(4, 6, seed=2)
    q.push(a, torch.tensor([0, 1, 2]))
    q.push(b, torch.tensor([3, 4, 5, 6]))
    assert len(q) == 5
    ids = q.item_ids().tolist()
    assert sorted(ids) == [2, 3, 4, 5, 6]  # sample 0 and 1 were overwritten
    tok = q.tokens()
    assert tok.feats.shape == (5, 6, 4)
    k = ids.index(2)  # the survivor of the first batch: its padding grew and stays masked
    a0, b0 = a.zero_padding(), b.zero_padding()  # padding is stored as zeros
    assert torch.equal(tok.feats[k, :4], a0.feats[2]) and not tok.mask[k, 4:].any() and not tok.feats[k, 4:].any()
    assert torch.equal(tok.mask[k, :4], a.mask[2])
    k = ids.index(6)
    assert torch.equal(tok.feats[k], b0.feats[3]) and torch.equal(tok.pooled[k], b.pooled[3])
    q2 = FeatureQueue(5)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.tokens().feats, tok.feats) and q2.ptr == q.ptr and q2.item_ids().tolist() == ids
    q3 = FeatureQueue(2)
    q3.push(b, torch.tensor([3, 4, 5, 6]))  # a batch larger than the queue keeps its newest rows
    assert sorted(q3.item_ids().tolist()) == [5, 6]
