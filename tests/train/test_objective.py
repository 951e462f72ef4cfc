"""The loss of one batch, with the queue and the teacher, against a per-pair computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.losses.naive import naive_loss
from tests.train.helpers import S, _batch, _model, _pair_scores
from tokenflow import Tokens
from tokenflow.losses import FeatureQueue
from tokenflow.train import Objective


def _soft(rows, scale, labels, alpha, by_rows=True):
    """alpha * softmax(scale * s) + (1 - alpha) * y, per query (rows, or columns)."""
    n, m = len(rows), len(rows[0])
    out = [[0.0] * m for _ in range(n)]
    if by_rows:
        for i in range(n):
            z = sum(math.exp(scale * rows[i][j]) for j in range(m))
            for j in range(m):
                out[i][j] = alpha * math.exp(scale * rows[i][j]) / z + (1 - alpha) * labels[i][j]
    else:
        for j in range(m):
            z = sum(math.exp(scale * rows[i][j]) for i in range(n))
            for i in range(n):
                out[i][j] = alpha * math.exp(scale * rows[i][j]) / z + (1 - alpha) * labels[i][j]
    return out


@pytest.mark.parametrize("aligner", ["tokenflow", "scan", None])
def test_batch_loss_without_distillation(aligner):
    model = _model(aligner)
    batch = _batch(model, [0, 1, 2, 3])
    out = Objective(model)(batch)
    vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
    g, fv, ft = _pair_scores(model, vis, txt)
    eye = torch.eye(4).tolist()
    want = 0.7 * naive_loss(g, g, S, eye, eye)
    if aligner is not None:
        want += 1.3 * naive_loss(fv, ft, S, eye, eye)
    assert out.stats["loss"] == pytest.approx(want, rel=1e-9)
    assert out.enqueue is None


def test_two_captions_of_one_item_are_both_positives():
    model = _model("tokenflow")
    batch = _batch(model, [0, 1, 0, 2])  # pairs 0 and 2 show the same item
    out = Objective(model)(batch)
    vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
    g, fv, ft = _pair_scores(model, vis, txt)
    y = [[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]]
    want = 0.7 * naive_loss(g, g, S, y, y) + 1.3 * naive_loss(fv, ft, S, y, y)
    assert out.stats["loss"] == pytest.approx(want, rel=1e-9)


def test_momentum_distillation_targets_and_queue_columns():
    """Student rows over [batch; queued teacher features]; targets from the teacher's own
    scores over the same columns, mixed with the labels (eq 23-24)."""
    model = _model("tokenflow")
    teacher = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # the teacher differs from the student, as after some EMA steps
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    qv, qt = FeatureQueue(3), FeatureQueue(3)
    old = _batch(model, [3, 4, 1], seed=7)  # the queue holds item 1 again: a positive column
    with torch.no_grad():
        qv.push(teacher.encode_visual(old.pixels), old.item_ids)
        qt.push(teacher.encode_text(old.ids, old.text_mask), old.item_ids)
    batch = _batch(model, [0, 1, 2])
    alpha = 0.4
    out = Objective(model, alpha=alpha)(batch, teacher=teacher, queues=(qv, qt))

    with torch.no_grad():
        vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
        tvis, ttxt = teacher.encode_visual(batch.pixels), teacher.encode_text(batch.ids, batch.text_mask)
    vis_cols, txt_cols = Tokens.cat([vis, qv.tokens()]), Tokens.cat([txt, qt.tokens()])
    tvis_cols, ttxt_cols = Tokens.cat([tvis, qv.tokens()]), Tokens.cat([ttxt, qt.tokens()])
    col_ids = [0, 1, 2, *qv.item_ids().tolist()]
    lab = [[(1.0 if col_ids[c] == r else 0.0) for c in range(6)] for r in (0, 1, 2)]
    lab = [[x / sum(row) for x in row] for row in lab]
    # v2t: local visual rows x text columns; t2v: visual columns x local text columns
    g_v, fv, _ = _pair_scores(model, vis, txt_cols)
    g_t, _, ft = _pair_scores(model, vis_cols, txt)
    tg_v, tfv, _ = _pair_scores(teacher, tvis, ttxt_cols)
    tg_t, _, tft = _pair_scores(teacher, tvis_cols, ttxt)
    lab_t = [list(r) for r in zip(*lab, strict=True)]  # [6 visual columns, 3 texts]
    want_g = naive_loss(g_v, g_t, S, _soft(tg_v, S, lab, alpha), _soft(tg_t, S, lab_t, alpha, by_rows=False))
    want_f = naive_loss(fv, ft, S, _soft(tfv, S, lab, alpha), _soft(tft, S, lab_t, alpha, by_rows=False))
    assert out.stats["loss_global"] == pytest.approx(want_g, rel=1e-9)
    assert out.stats["loss_fine"] == pytest.approx(want_f, rel=1e-9)
    assert out.stats["loss"] == pytest.approx(0.7 * want_g + 1.3 * want_f, rel=1e-9)
    # alpha = 0 is the plain loss over batch + queue columns
    plain = Objective(model, alpha=0.0)(batch, teacher=teacher, queues=(qv, qt))
    assert plain.stats["loss_global"] == pytest.approx(naive_loss(g_v, g_t, S, lab, lab_t), rel=1e-9)
    # what goes to the queue afterwards is the teacher's batch features
    tv, tt, ids = out.enqueue
    assert torch.equal(tv.pooled, tvis.pooled) and torch.equal(tt.feats, ttxt.feats) and ids.tolist() == [0, 1, 2]


def test_gradients_reach_backbone_and_logit_scale():
    model = _model("tokenflow").float()
    out = Objective(model)(_batch(model.double(), [0, 1, 2]))
    out.loss.backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad.abs()) > 0
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_set_method_adds_its_own_losses():
    from tokenflow.align import aligner_for
    from tokenflow.losses.set_losses import global_discriminative_loss, intra_set_divergence

    model = _model(None)
    model.aligner = aligner_for("mpa", {"heads": 2, "gd_weight": 0.5, "isd_weight": 0.2}, dim=16).double()
    model.w_fine = 1.3
    batch = _batch(model, [0, 1, 2, 3])
    out = Objective(model)(batch)
    vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
    with torch.no_grad():
        g = (vis.pooled @ txt.pooled.T).tolist()
        f = [[float(model.aligner.pairwise(vis[i], txt[j]).v2t) for j in range(4)] for i in range(4)]
        sv, st = model.aligner.sets(vis, txt)
        gd = float(global_discriminative_loss(sv.feats, st.feats, vis.pooled, txt.pooled, S))
        isd = float(intra_set_divergence(sv.feats, 0.5) + intra_set_divergence(st.feats, 0.5)) / 2
    eye = torch.eye(4).tolist()
    want = 0.7 * naive_loss(g, g, S, eye, eye) + 1.3 * naive_loss(f, f, S, eye, eye) + 0.5 * gd + 0.2 * isd
    assert out.stats["loss"] == pytest.approx(want, rel=1e-9)
    assert out.stats["loss_set_gd"] == pytest.approx(gd, rel=1e-9)
    assert out.stats["loss_set_isd"] == pytest.approx(isd, rel=1e-9)


def test_cs_terms_take_the_batch_and_the_unpaired_extras():
    from tokenflow.losses import cs_divergence, cs_divergence_tokens
    from tokenflow.train.config import CSConfig

    model = _model("scan")
    batch = _batch(model, [0, 1, 2])
    base = Objective(model)(batch).stats["loss"]
    g = torch.Generator().manual_seed(5)
    batch.extra_pixels = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    batch.extra_ids, batch.extra_text_mask = model.backbone.tokenize(["red circle", "big square", "a small blue"])
    out = Objective(model, cs=CSConfig(weight=0.5, token_weight=0.2, sigma=0.8))(batch)
    with torch.no_grad():
        vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
        ev, et = model.encode_visual(batch.extra_pixels), model.encode_text(batch.extra_ids, batch.extra_text_mask)
        d = float(cs_divergence(torch.cat([vis.pooled, ev.pooled]), torch.cat([txt.pooled, et.pooled]), 0.8))
        dt = float(cs_divergence_tokens(Tokens.cat([vis, ev]), Tokens.cat([txt, et]), 0.8))
    assert d > 0 and dt > 0
    assert out.stats["loss_cs"] == pytest.approx(d, rel=1e-9)
    assert out.stats["loss_cs_tokens"] == pytest.approx(dt, rel=1e-9)
    assert out.stats["loss"] == pytest.approx(base + 0.5 * d + 0.2 * dt, rel=1e-9)
    pix = batch.extra_pixels.clone().requires_grad_()
    batch.extra_pixels = pix
    Objective(model, cs=CSConfig(weight=0.5, sigma=0.8))(batch).loss.backward()
    assert pix.grad is not None and pix.grad.abs().sum() > 0  # unpaired items are trained through the CS term
