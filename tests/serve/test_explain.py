"""The explanation panel's numbers (``/api/explain``): each plan's own token weights where it has
them, a label saying what is shown where it has none, the words of a stored caption, and one
marker per patch."""

from __future__ import annotations

import pytest
import torch

from tokenflow import get_aligner
from tokenflow.index import FeatureStore
from tokenflow.serve import create_app


def explain(client, query, item, plan, hparams=None) -> dict:
    r = client.post("/api/explain", json={"query": query, "item": item, "plan": plan, "hparams": hparams or {}})
    assert r.status_code == 200, r.text
    return r.json()


def pair(collection, query, item):
    """The stored tokens of ``item`` and the encoded ``query``, as the server explains them."""
    store = FeatureStore(collection.root / "store")
    with torch.no_grad():
        txt = collection.model.encode_text_strings([query])
    return store.tokens([store.ids.index(item)]), txt


@pytest.fixture(scope="module")
def wti_client(collection):
    from fastapi.testclient import TestClient

    app = create_app(collection.index, collection.model_dir, aligner_names=["wti", "max-avg"])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def test_wti_shows_its_learned_token_weights(wti_client, collection):
    aligner = wti_client.app.state.engine.aligner("wti")  # the very aligner the server explains with
    torch.manual_seed(3)
    with torch.no_grad():  # weights far from uniform, as training leaves them
        for p in aligner.parameters():
            p.normal_(std=1.0)
    query, item = collection.split.texts[2], collection.split.item_ids[5]
    ex = explain(wti_client, query, item, "wti")
    vis, txt = pair(collection, query, item)
    with torch.no_grad():
        a = aligner.token_weights(aligner.visual_weight, vis, torch.float32)[0]
        b = aligner.token_weights(aligner.text_weight, txt, torch.float32)[0][txt.mask[0]]
        plan = aligner.plan(vis, txt)
    assert ex["weights"] == "plan" and "wti's learned token weights" in ex["weights_label"]
    torch.testing.assert_close(torch.tensor(ex["d"]), a)
    torch.testing.assert_close(torch.tensor(ex["e"]), b)
    assert sum(ex["d"]) == pytest.approx(1.0, abs=1e-5) and sum(ex["e"]) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(torch.tensor(ex["d"]), plan.d.float(), atol=1e-3)  # not the global similarity
    assert max(ex["d"]) > 2 * min(ex["d"])  # the weights moved: the test can tell them from uniform ones


def test_tokenflow_shows_d_and_e_of_eq_14(client, collection):
    query, item = collection.split.texts[7], collection.split.item_ids[3]
    ex = explain(client, query, item, "tokenflow")
    vis, txt = pair(collection, query, item)
    n_words = int(txt.mask[0].sum())
    # eq 14, one token at a time: d[s] = mu_s . omega_bar, e[t] = mu_bar . omega_t
    d = [float(sum(vis.feats[0, s, k] * txt.pooled[0, k] for k in range(vis.dim))) for s in range(16)]
    e = [float(sum(vis.pooled[0, k] * txt.feats[0, t, k] for k in range(vis.dim))) for t in range(n_words)]
    assert ex["weights"] == "plan" and "eq 14" in ex["weights_label"]
    assert ex["d"] == pytest.approx(d, abs=1e-5) and ex["e"] == pytest.approx(e, abs=1e-5)


def test_a_plan_without_token_weights_says_what_the_heat_map_shows(client, collection):
    query, item = collection.split.texts[1], collection.split.item_ids[0]
    ex = explain(client, query, item, "max-avg")
    vis, txt = pair(collection, query, item)
    plan = get_aligner("max-avg").plan(vis, txt)
    share = plan.c * plan.t2v
    assert ex["weights"] == "score-share"
    assert ex["weights_label"].startswith("max-avg weighs no token on its own: each patch's and each word's share")
    torch.testing.assert_close(torch.tensor(ex["d"]), share.sum(1))
    torch.testing.assert_close(torch.tensor(ex["e"]), share.sum(0))
    assert sum(ex["d"]) == pytest.approx(ex["score"], abs=1e-5)


def test_one_marker_per_patch_lists_every_pair_on_it(client, collection):
    seen_shared = False
    for i in range(6):
        ex = explain(client, collection.split.texts[i], collection.split.item_ids[i], "max-avg")
        pairs, markers = ex["top_pairs"], ex["markers"]
        assert len({m["patch"] for m in markers}) == len(markers)  # no two markers on one patch
        assert sorted(n for m in markers for n in m["pairs"]) == list(range(1, len(pairs) + 1))
        for m in markers:
            assert all(pairs[n - 1]["patch"] == m["patch"] for n in m["pairs"])
            assert (m["row"], m["col"]) == divmod(m["patch"], 4) and m["label"] == ",".join(map(str, m["pairs"]))
        seen_shared |= len(markers) < len(pairs)
    assert seen_shared  # max-avg sends several words to one patch: the grouping was exercised


def test_stored_words_name_why_tokens_are_numbered(collection):
    from tokenflow.serve.explain import stored_words

    model = collection.model
    text = collection.split.texts[0]
    n = int(model.tokenize([text])[1].sum())
    words, note = stored_words(model, text, n)
    assert words[0] == "<bos>" and words[-1] == "<eos>" and len(words) == n and note is None
    assert stored_words(model, None, 3) == (["#1", "#2", "#3"], "the store keeps no text for this item: its tokens "
                                                                "are numbered")
    words, note = stored_words(model, "one two", 7)  # neither the model's tokens nor the words fit
    assert words == [f"#{t}" for t in range(1, 8)] and "do not match" in note
