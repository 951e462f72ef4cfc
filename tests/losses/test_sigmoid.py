"""The sigmoid loss against a double loop written from the equation, gradcheck, and the ring of
two gloo processes against one process holding the whole batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from tests.losses.naive import naive_sigmoid
from tokenflow import Tokens, get_aligner
from tokenflow.losses import INIT_BIAS, INIT_SCALE, ring_sigmoid_losses, sigmoid_loss


def naive_max_avg(mu, om):
    """MeanMaxSim both ways on the real tokens of one pair: (s_v2t, s_t2v)."""
    c = [[sum(a * b for a, b in zip(x, y, strict=True)) for y in om] for x in mu]
    return (sum(max(row) for row in c) / len(mu),
            sum(max(c[s][t] for s in range(len(mu))) for t in range(len(om))) / len(om))


def test_paper_initialisation():
    """t' = log 10, b = -10 (Zhai et al.): what a sigmoid model built without other values starts at."""
    pytest.importorskip("pydantic")  # tokenflow.train (initial_logits) needs the train extra
    from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer
    from tokenflow.models.retrieval import RetrievalModel
    from tokenflow.train.objective import initial_logits

    assert (INIT_SCALE, INIT_BIAS) == (10.0, -10.0)
    tiny = TinyCLIP(TinyConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                    WordTokenizer.build(["a red cube"]))
    scale, bias = initial_logits("sigmoid", tiny)  # a backbone not trained with the sigmoid loss
    model = RetrievalModel(tiny, None, logit_scale=scale, logit_bias=bias)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(10.0))  # t' itself is the parameter
    assert float(model.scale().detach()) == pytest.approx(10.0) and float(model.logit_bias.detach()) == -10.0
    assert initial_logits("infonce", tiny) == (None, None)
    assert RetrievalModel(tiny, None).logit_bias is None  # InfoNCE: no bias, CLIP's 1/0.07
    assert float(RetrievalModel(tiny, None).scale().detach()) == pytest.approx(1 / 0.07)


@pytest.mark.parametrize("ids", [None, ([0, 1, 2, 0], [0, 1, 2, 0, 3, 1])])
def test_sigmoid_loss_equals_the_double_loop(ids):
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1
    row_ids, col_ids = (None, None) if ids is None else (torch.tensor(ids[0]), torch.tensor(ids[1]))
    got = sigmoid_loss(s, 7.5, -3.0, row_ids, col_ids)
    r, c = (list(range(4)), list(range(6))) if ids is None else ids
    assert float(got) == pytest.approx(naive_sigmoid(s.tolist(), 7.5, -3.0, r, c), rel=1e-12)
    # the paper divides by the batch, not by the number of pairs
    assert float(sigmoid_loss(s, 7.5, -3.0, row_ids, col_ids, rows=2)) == pytest.approx(2 * float(got), rel=1e-12)


def test_no_rows_give_a_zero_loss_connected_to_the_graph():
    """A process whose share of the batch is empty: loss 0 (not 0/0), and every input still gets
    a gradient (zeros), so a backward pass and DDP's reduction go through."""
    s = torch.empty(0, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    for rows in (None, 0):
        loss = sigmoid_loss(s, t, b, rows=rows)
        assert float(loss.detach()) == 0.0 and loss.requires_grad
        g = torch.autograd.grad(loss, [s, t, b])
        assert g[0].shape == (0, 4) and float(g[1]) == 0.0 and float(g[2]) == 0.0
    vis = torch.empty(0, 3, dtype=torch.float64, requires_grad=True)
    txt = Tokens(torch.randn(2, 4, 3, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool),
                 torch.randn(2, 3, dtype=torch.float64, requires_grad=True))
    no_ids = torch.empty(0, dtype=torch.long)
    losses = ring_sigmoid_losses(lambda chunk: {"global": [vis @ chunk.pooled.T]}, txt, no_ids, torch.tensor([0, 1]),
                                 t, b)
    assert float(losses["global"].detach()) == 0.0
    losses["global"].backward()
    assert txt.pooled.grad is not None and not txt.pooled.grad.any() and t.grad is not None


def test_large_logits_stay_finite():
    s = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert torch.isfinite(sigmoid_loss(s, 1e4, 0.0)) and float(sigmoid_loss(s, 1e4, 0.0)) == pytest.approx(0.0)
    assert float(sigmoid_loss(-s, 1e4, 0.0)) == pytest.approx(2 * 1e4, rel=1e-6)


def test_gradcheck_scores_temperature_and_bias():
    g = torch.Generator().manual_seed(1)
    s = (torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    t_prime = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 2, 3])
    assert torch.autograd.gradcheck(lambda s, t, b: sigmoid_loss(s, t.exp(), b, *ids), (s, t_prime, b))


def _problem(dtype=torch.float64):
    """8 pairs: visual tokens (all real), texts of varying length, item ids with repeats."""
    g = torch.Generator().manual_seed(3)
    n, d = 8, 5
    vis = Tokens(F.normalize(torch.randn(n, 4, d, generator=g, dtype=dtype), dim=-1),
                 torch.ones(n, 4, dtype=torch.bool), F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1))
    lengths = torch.tensor([3, 6, 2, 5, 4, 1, 6, 2])
    mask = torch.arange(6).expand(n, 6) < lengths[:, None]
    feats = F.normalize(torch.randn(n, 6, d, generator=g, dtype=dtype), dim=-1) * mask[..., None]
    txt = Tokens(feats, mask, F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1))
    ids = torch.tensor([0, 1, 2, 3, 1, 5, 0, 7])  # pairs 0/6 and 1/4 show one item: cross-rank positives
    return vis, txt, ids


def _scorer(vis: Tokens, fine: bool):
    plan = get_aligner("max-avg")

    def score(chunk: Tokens) -> dict[str, list[torch.Tensor]]:
        out = {"global": [vis.pooled @ chunk.pooled.T]}
        if fine:
            s = plan.pairwise(vis, chunk, check=False)
            out["fine"] = [s.v2t, s.t2v]
        return out

    return score


def test_ring_on_one_process_equals_the_double_loop_with_max_avg():
    vis, txt, ids = _problem()
    got = ring_sigmoid_losses(_scorer(vis, True), txt, ids, ids, 10.0, -10.0)
    glob = (vis.pooled @ txt.pooled.T).tolist()
    v2t = [[0.0] * 8 for _ in range(8)]
    t2v = [[0.0] * 8 for _ in range(8)]
    for i in range(8):
        for j in range(8):
            mu = vis.feats[i][vis.mask[i]].tolist()
            om = txt.feats[j][txt.mask[j]].tolist()
            v2t[i][j], t2v[i][j] = naive_max_avg(mu, om)
    ids_l = ids.tolist()
    assert float(got["global"]) == pytest.approx(naive_sigmoid(glob, 10.0, -10.0, ids_l, ids_l), rel=1e-10)
    want = (naive_sigmoid(v2t, 10.0, -10.0, ids_l, ids_l) + naive_sigmoid(t2v, 10.0, -10.0, ids_l, ids_l)) / 2
    assert float(got["fine"]) == pytest.approx(want, rel=1e-10)


def test_gradcheck_through_a_plan_on_one_process():
    vis, txt, ids = _problem()
    vis, txt = vis[:3], txt[:4]
    vf, vp = vis.feats.clone().requires_grad_(), vis.pooled.clone().requires_grad_()
    tf, tp = txt.feats.clone().requires_grad_(), txt.pooled.clone().requires_grad_()
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)

    def f(vf, vp, tf, tp, b):
        v, t = Tokens(vf, vis.mask, vp), Tokens(tf, txt.mask, tp)
        out = ring_sigmoid_losses(_scorer(v, True), t, ids[:3], ids[:4], 4.0, b)
        return out["global"] + out["fine"]

    assert torch.autograd.gradcheck(f, (vf, vp, tf, tp, b))


# -- two gloo processes ---------------------------------------------------------------------------
SIZES = [3, 5]


def _leaves(vis: Tokens, txt: Tokens, rows: slice):
    """This share of the batch as leaf tensors (texts cut to the share's longest text)."""
    length = int(txt.mask[rows].sum(1).max())
    vf, vp = vis.feats[rows].clone().requires_grad_(), vis.pooled[rows].clone().requires_grad_()
    tf, tp = txt.feats[rows, :length].clone().requires_grad_(), txt.pooled[rows].clone().requires_grad_()
    t_prime = torch.tensor(math.log(INIT_SCALE), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(INIT_BIAS, dtype=torch.float64, requires_grad=True)
    return vf, vp, tf, tp, t_prime, b, Tokens(vf, vis.mask[rows], vp), Tokens(tf, txt.mask[rows, :length], tp)


def _losses(fine: bool, rank: int, world: int, rows: slice):
    vis, txt, ids = _problem()
    vf, vp, tf, tp, t_prime, b, v, t = _leaves(vis, txt, rows)
    out = ring_sigmoid_losses(_scorer(v, fine), t, ids[rows], ids[rows], t_prime.exp(), b, rank=rank, world=world,
                              sizes=SIZES, tokens=fine)
    loss = sum(out.values())
    return out, loss, (vf, vp, tf, tp, t_prime, b)


def _worker(rank: int, port: int, folder: str, fine: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        start = sum(SIZES[:rank])
        out, loss, leaves = _losses(fine, rank, 2, slice(start, start + SIZES[rank]))
        # the global loss is the row-weighted mean of the processes' losses
        (loss * SIZES[rank] / sum(SIZES)).backward()
        vf, vp, tf, tp, t_prime, b = leaves
        shared = torch.stack([t_prime.grad, b.grad])
        dist.all_reduce(shared)  # each process holds its own loss's share of these gradients
        losses = {k: float(v.detach()) for k, v in out.items()}
        torch.save({"losses": losses, "grads": [x.grad for x in (vf, vp, tf, tp)], "shared": shared},
                   os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fine", [False, True], ids=["global", "max-avg-tokens"])
def test_two_gloo_processes_equal_one_process(tmp_path, fine):
    """Uneven shares (3 + 5 pairs), texts of different lengths on each process, positives that
    sit on different processes: losses and every gradient to 1e-6."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), fine), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    out, loss, leaves = _losses(fine, 0, 1, slice(0, 8))
    loss.backward()
    vf, vp, tf, tp, t_prime, b = leaves
    for name, value in out.items():
        mean = sum(r["losses"][name] * n for r, n in zip(ranks, SIZES, strict=True)) / sum(SIZES)
        assert mean == pytest.approx(float(value.detach()), abs=1e-6, rel=1e-6), name
    torch.testing.assert_close(ranks[0]["shared"], torch.stack([t_prime.grad, b.grad]), atol=1e-6, rtol=1e-6)
    for r, rows in enumerate((slice(0, 3), slice(3, 8))):
        got_vf, got_vp, got_tf, got_tp = ranks[r]["grads"]
        torch.testing.assert_close(got_vp, vp.grad[rows], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_tp, tp.grad[rows], atol=1e-6, rtol=1e-6)
        if fine:
            torch.testing.assert_close(got_vf, vf.grad[rows], atol=1e-6, rtol=1e-6)
            n = got_tf.shape[1]
            torch.testing.assert_close(got_tf, tf.grad[rows, :n], atol=1e-6, rtol=1e-6)
        else:
            assert got_vf is None and got_tf is None  # global only: no token is scored
