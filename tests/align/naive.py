"""Naive per-pair references, written straight from the equations, in float64.

Each function takes ONE pair restricted to its real tokens (mu [l1, D], om [l2, D], global
features mu_bar, om_bar [D]) and returns (T_v2t, T_t2v) as [l1, l2] lists-of-loops results.
Nothing here shares code with the library. EMD uses scipy's LP solver (HiGHS), not POT; exact
assignment uses brute force over injective maps.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import linprog


def _c(mu, om):
    l1, l2 = mu.shape[0], om.shape[0]
    return np.array([[float(mu[s] @ om[t]) for t in range(l2)] for s in range(l1)])


def _softmax(xs):
    m = max(xs)
    ex = [math.exp(x - m) for x in xs]
    z = sum(ex)
    return [x / z for x in ex]


def uniform(mu, om, mu_bar, om_bar, hp):
    l1, l2 = mu.shape[0], om.shape[0]
    t = np.full((l1, l2), 1.0 / (l1 * l2))
    return t, t


def learnable(mu, om, mu_bar, om_bar, hp):
    w, pos_v, pos_t = hp["weight"], hp["pos_v"], hp["pos_t"]
    ex = np.array([[math.exp(float(w[ps, pt])) for pt in pos_t] for ps in pos_v])
    t = ex / ex.sum()
    return t, t


def scan(mu, om, mu_bar, om_bar, hp):
    lam = hp.get("lam", 9.0)
    c = _c(mu, om)
    l1, l2 = c.shape
    tv = np.zeros((l1, l2))
    tt = np.zeros((l1, l2))
    for s in range(l1):  # eq 18: softmax over words for each visual token, then / l1 (eq 11)
        beta = _softmax([lam * c[s, t] for t in range(l2)])
        for t in range(l2):
            tv[s, t] = beta[t] / l1
    for t in range(l2):
        beta = _softmax([lam * c[s, t] for s in range(l1)])
        for s in range(l1):
            tt[s, t] = beta[s] / l2
    return tv, tt


def _max(mu, om, average):
    c = _c(mu, om)
    l1, l2 = c.shape
    tv = np.zeros((l1, l2))
    tt = np.zeros((l1, l2))
    for s in range(l1):
        tv[s, int(np.argmax(c[s]))] = 1.0 / l1 if average else 1.0
    for t in range(l2):
        tt[int(np.argmax(c[:, t])), t] = 1.0 / l2 if average else 1.0
    return tv, tt


def max_avg(mu, om, mu_bar, om_bar, hp):
    return _max(mu, om, True)


def max_sum(mu, om, mu_bar, om_bar, hp):
    return _max(mu, om, False)


def weights(mu, om, mu_bar, om_bar):
    """Eq 14."""
    d = [float(mu[s] @ om_bar) for s in range(mu.shape[0])]
    e = [float(mu_bar @ om[t]) for t in range(om.shape[0])]
    return d, e


def tokenflow(mu, om, mu_bar, om_bar, hp):
    lam = hp.get("lam", 20.0)
    c = _c(mu, om)
    d, e = weights(mu, om, mu_bar, om_bar)
    l1, l2 = c.shape
    tv = np.zeros((l1, l2))
    tt = np.zeros((l1, l2))
    for s in range(l1):  # eq 15
        den = sum(math.exp(lam * e[r] * c[s, r]) for r in range(l2))
        for t in range(l2):
            tv[s, t] = d[s] * math.exp(lam * e[t] * c[s, t]) / (l1 * den)
    for t in range(l2):  # eq 16
        den = sum(math.exp(lam * d[r] * c[r, t]) for r in range(l1))
        for s in range(l1):
            tt[s, t] = e[t] * math.exp(lam * d[s] * c[s, t]) / (l2 * den)
    return tv, tt


def marginals(mu, om, mu_bar, om_bar):
    """Eq 14 weights clamped at zero and normalised; uniform if all are <= 0."""
    d, e = weights(mu, om, mu_bar, om_bar)

    def norm(w):
        w = np.maximum(np.array(w), 0.0)
        return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))

    return norm(d), norm(e)


def _marginal_rows(l1, l2):
    """The linear map T (flattened) -> (row sums, column sums), as a matrix."""
    rows = np.zeros((l1 + l2, l1 * l2))
    for s in range(l1):
        rows[s, s * l2 : (s + 1) * l2] = 1
    for t in range(l2):
        rows[l1 + t, t::l2] = 1
    return rows


def exact_ot(cost, a, b):
    """Exact OT by linear programming (scipy HiGHS), independent of POT."""
    l1, l2 = cost.shape
    res = linprog(cost.ravel(), A_eq=_marginal_rows(l1, l2), b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    assert res.success, res.message
    return res.x.reshape(l1, l2)


def emd(mu, om, mu_bar, om_bar, hp):
    a, b = marginals(mu, om, mu_bar, om_bar)
    t = exact_ot(1.0 - _c(mu, om), a, b)
    return t, t


def plain_sinkhorn(kernel, a, b, n_iter):
    """Sinkhorn in the plain (non-log) domain: u = a / K v, v = b / K^T u, starting from v = 1."""
    v = np.ones(len(b))
    for _ in range(n_iter):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def sinkhorn(mu, om, mu_bar, om_bar, hp):
    eps, n_iter = hp.get("eps", 0.05), hp.get("n_iter", 100)
    a, b = marginals(mu, om, mu_bar, om_bar)
    t = plain_sinkhorn(np.exp(-(1.0 - _c(mu, om)) / eps), a, b, n_iter)
    return t, t


def partial_ot(mu, om, mu_bar, om_bar, hp):
    mass, eps, n_iter = hp.get("mass", 0.9), hp.get("eps", 0.05), hp.get("n_iter", 50)
    c = _c(mu, om)
    l1, l2 = c.shape
    if hp.get("marginals", "global") == "global":
        a, b = marginals(mu, om, mu_bar, om_bar)
    else:
        a, b = np.full(l1, 1.0 / l1), np.full(l2, 1.0 / l2)
    kernel = np.ones((l1 + 1, l2 + 1))  # dummy row / column: cost 0 -> kernel 1
    kernel[:l1, :l2] = np.exp(-(1.0 - c) / eps)
    kernel[l1, l2] = 0.0  # dummy to dummy is forbidden
    t = plain_sinkhorn(kernel, np.append(a, 1 - mass), np.append(b, 1 - mass), n_iter)[:l1, :l2]
    return t, t


def assignment(mu, om, mu_bar, om_bar, hp):
    c = _c(mu, om)
    l1, l2 = c.shape
    if hp.get("exact", False):
        k = min(l1, l2)
        best, best_pairs = -np.inf, None
        if l1 <= l2:
            for cols in itertools.permutations(range(l2), l1):
                val = sum(c[s, cols[s]] for s in range(l1))
                if val > best:
                    best, best_pairs = val, [(s, cols[s]) for s in range(l1)]
        else:
            for rows in itertools.permutations(range(l1), l2):
                val = sum(c[rows[t], t] for t in range(l2))
                if val > best:
                    best, best_pairs = val, [(rows[t], t) for t in range(l2)]
        t = np.zeros((l1, l2))
        for s, tt in best_pairs:
            t[s, tt] = 1.0 / k
        return t, t
    eps, n_iter = hp.get("eps", 0.05), hp.get("n_iter", 50)
    t = plain_sinkhorn(np.exp(c / eps), np.full(l1, 1.0 / l1), np.full(l2, 1.0 / l2), n_iter)
    return t, t


def exact_partial_ot(cost, a, b, mass):
    """Partial transport by linear programming: T >= 0, T 1 <= a, T^T 1 <= b, sum T = mass."""
    l1, l2 = cost.shape
    res = linprog(cost.ravel(), A_ub=_marginal_rows(l1, l2), b_ub=np.concatenate([a, b]), A_eq=np.ones((1, l1 * l2)),
                  b_eq=[mass], bounds=(0, None), method="highs")
    assert res.success, res.message
    return res.x.reshape(l1, l2)


def omit(mu, om, mu_bar, om_bar, hp):
    marg, mass = hp.get("marginals", "uniform"), hp.get("mass", 1.0)
    eps, n_iter, tau = hp.get("eps", 0.05), hp.get("n_iter", 3), hp.get("tau", 0.1)
    c = _c(mu, om)
    l1, l2 = c.shape
    if marg == "l2g":  # softmax of each fragment's cosine to the other side's mean embedding
        def cos(x, y):
            return float(x @ y) / (math.sqrt(float(x @ x)) * math.sqrt(float(y @ y)))

        om_mean, mu_mean = om.mean(0), mu.mean(0)
        a = np.array(_softmax([cos(mu[s], om_mean) / tau for s in range(l1)]))
        b = np.array(_softmax([cos(om[t], mu_mean) / tau for t in range(l2)]))
    else:
        a, b = np.full(l1, 1.0 / l1), np.full(l2, 1.0 / l2)
    if hp.get("solver", "sinkhorn") == "exact":
        t = exact_ot(1.0 - c, a, b) if mass >= 1 else exact_partial_ot(1.0 - c, a, b, mass)
    elif mass < 1:
        kernel = np.ones((l1 + 1, l2 + 1))
        kernel[:l1, :l2] = np.exp(-(1.0 - c) / eps)
        kernel[l1, l2] = 0.0
        t = plain_sinkhorn(kernel, np.append(a, 1 - mass), np.append(b, 1 - mass), n_iter)[:l1, :l2]
    else:
        t = plain_sinkhorn(np.exp(-(1.0 - c) / eps), a, b, n_iter)
    return t, t


NAIVE = {
    "omit": omit,
    "uniform": uniform,
    "learnable": learnable,
    "scan": scan,
    "max-avg": max_avg,
    "max-sum": max_sum,
    "tokenflow": tokenflow,
    "emd": emd,
    "sinkhorn": sinkhorn,
    "partial-ot": partial_ot,
    "assignment": assignment,
}


def naive_pairwise(name, vis, txt, hp):
    """Loop over every pair: (v2t, t2v) score matrices and the per-pair plans, float64 numpy."""
    n, m = len(vis), len(txt)
    v2t, t2v = np.zeros((n, m)), np.zeros((n, m))
    plans = {}
    for i in range(n):
        pos_v = torch.nonzero(vis.mask[i]).flatten().tolist()
        mu = vis.feats[i, pos_v].double().numpy()
        for j in range(m):
            pos_t = torch.nonzero(txt.mask[j]).flatten().tolist()
            om = txt.feats[j, pos_t].double().numpy()
            extra = dict(hp, pos_v=pos_v, pos_t=pos_t)
            tv, tt = NAIVE[name](mu, om, vis.pooled[i].double().numpy(), txt.pooled[j].double().numpy(), extra)
            c = _c(mu, om)
            v2t[i, j], t2v[i, j] = (c * tv).sum(), (c * tt).sum()
            plans[i, j] = (c, tv, tt)
    return v2t, t2v, plans


# -- peer methods with learned heads (tests/align/test_peers.py) -------------------------------


def _mlp(layers, x):
    """A Linear-ReLU-...-Linear stack given as [(W, b), ...] numpy arrays, on one vector."""
    for k, (w, b) in enumerate(layers):
        x = w @ x + b
        if k < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return float(x[0])


def _cos(x, y):
    return float(x @ y) / (math.sqrt(float(x @ x)) * math.sqrt(float(y @ y)))


def wti_weights(mu, om, hp):
    """DRL's token weights: softmax over the real tokens of each MLP score."""
    a = _softmax([_mlp(hp["visual_mlp"], mu[s]) for s in range(mu.shape[0])])
    b = _softmax([_mlp(hp["text_mlp"], om[t]) for t in range(om.shape[0])])
    return a, b


def wti_score(mu, om, mu_bar, om_bar, hp):
    """DRL's WTI: 1/2 [sum_t b_t max_s cos + sum_s a_s max_t cos] over real tokens."""
    l1, l2 = mu.shape[0], om.shape[0]
    cos = [[_cos(mu[s], om[t]) for t in range(l2)] for s in range(l1)]
    a, b = wti_weights(mu, om, hp)
    text_side = sum(b[t] * max(cos[s][t] for s in range(l1)) for t in range(l2))
    visual_side = sum(a[s] * max(cos[s][t] for t in range(l2)) for s in range(l1))
    return 0.5 * (text_side + visual_side)


def wti(mu, om, mu_bar, om_bar, hp):
    """WTI as a plan over c = mu . omega: each argmax carries its token's weight / (2 |mu| |omega|)."""
    l1, l2 = mu.shape[0], om.shape[0]
    cos = np.array([[_cos(mu[s], om[t]) for t in range(l2)] for s in range(l1)])
    a, b = wti_weights(mu, om, hp)
    t_ = np.zeros((l1, l2))
    for s in range(l1):
        t_[s, int(np.argmax(cos[s]))] += a[s]
    for t in range(l2):
        t_[int(np.argmax(cos[:, t])), t] += b[t]
    for s in range(l1):
        for t in range(l2):
            t_[s, t] /= 2 * math.sqrt(float(mu[s] @ mu[s])) * math.sqrt(float(om[t] @ om[t]))
    return t_, t_


NAIVE["wti"] = wti


def _aosm(x, w):
    """X-CLIP's attention over a similarity vector: sum_p x_p (softmax(x / tau) W)_p."""
    tau = w["tau"]
    beta = _softmax([xp / tau for xp in x])
    mix = w["mix"]
    return sum(x[p] * sum(beta[r] * mix[r, p] for r in range(len(x))) for p in range(len(x)))


def xclip_score(mu, om, mu_bar, om_bar, hp):
    """X-CLIP's (video-sentence + video-word + sentence-frame + frame-word) / 4 for one pair, its
    position matrices restricted to the pair's real positions ``pos_v`` / ``pos_t``."""
    tau, pv, pt = hp["tau"], hp["pos_v"], hp["pos_t"]

    def sub(name, pos):
        return {"tau": tau, "mix": hp[name][np.ix_(pos, pos)]}

    unit = lambda x: x / math.sqrt(float(x @ x))
    frames, words = [unit(x) for x in mu], [unit(x) for x in om]
    video, sentence = unit(mu_bar), unit(om_bar)
    g, loc = hp["global_mat_weight"], hp["local_mat_weight"]
    l1, l2 = len(frames), len(words)
    s_vs = float(sentence @ g @ video)
    s_vw = _aosm([float(w @ video) for w in words], sub("word_logit_weight", pt))
    s_sf = _aosm([float(sentence @ f) for f in frames], sub("frame_logit_weight", pv))
    c = [[float(words[t] @ loc @ frames[s]) for t in range(l2)] for s in range(l1)]
    per_frame = [_aosm(c[s], sub("word_mat_weight", pt)) for s in range(l1)]
    per_word = [_aosm([c[s][t] for s in range(l1)], sub("frame_mat_weight", pv)) for t in range(l2)]
    s_fw = 0.5 * (_aosm(per_frame, sub("frame_mat_weight2", pv)) + _aosm(per_word, sub("word_mat_weight2", pt)))
    return (s_vs + s_vw + s_sf + s_fw) / 4


def naive_peer_scores(score, vis, txt, hp):
    """[n, m] of ``score(mu, om, mu_bar, om_bar, hp)`` over every pair's real tokens (float64)."""
    out = np.zeros((len(vis), len(txt)))
    for i in range(len(vis)):
        pos_v = torch.nonzero(vis.mask[i]).flatten().tolist()
        mu = vis.feats[i, pos_v].double().numpy()
        for j in range(len(txt)):
            pos_t = torch.nonzero(txt.mask[j]).flatten().tolist()
            om = txt.feats[j, pos_t].double().numpy()
            extra = dict(hp, pos_v=pos_v, pos_t=pos_t)
            out[i, j] = score(mu, om, vis.pooled[i].double().numpy(), txt.pooled[j].double().numpy(), extra)
    return out
