"""The JSON API of ``tokenflow serve``: search equals the Searcher, explanations equal
``Aligner.plan`` of the pair that was ranked, thumbnails come only from the collection, and every
bad input gets a JSON 4xx."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

from tokenflow import get_aligner
from tokenflow.index import Searcher
from tokenflow.serve import Limits, create_app


def search(client, query, plans=("tokenflow", "max-avg"), k=5, **kw):
    r = client.post("/api/search", json={"query": query, "k": k, "plans": list(plans), **kw})
    assert r.status_code == 200, r.text
    return r.json()


def png_bytes(size=(40, 30), color=(200, 30, 30), mode="RGB", fmt="PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


def test_the_page_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    info = client.get("/api/info").json()
    assert info["kind"] == "visual" and info["count"] == 16 and info["query"] == "text"
    assert info["plans"][:2] == ["tokenflow", "max-avg"] and "global" in info["plans"]


@pytest.mark.parametrize("plans, hp", [(("tokenflow", "max-avg"), {}), (("scan", "global"), {"scan": {"lam": 4.0}})])
def test_search_is_the_searchers_ranking(client, collection, plans, hp):
    query = collection.split.texts[3]
    got = search(client, query, plans, k=6, hparams=hp)
    assert [p["plan"] for p in got["plans"]] == list(plans)
    for col in got["plans"]:
        aligner = None if col["plan"] == "global" else get_aligner(col["plan"], **hp.get(col["plan"], {}))
        want = Searcher(collection.index, model=collection.model, aligner=aligner).search(query, k=6)[0]
        assert [r["id"] for r in col["results"]] == want.ids
        scores = torch.tensor([r["score"] for r in col["results"]])
        torch.testing.assert_close(scores, want.scores)
        for r in col["results"]:
            fine = 0.0 if r["fine"] is None else r["fine"]
            assert r["score"] == pytest.approx(r["global"] + fine, abs=1e-5)  # w_global = w_fine = 1
            assert r["media"] == f"/media/{r['id']}"
        assert (col["results"][0]["fine"] is None) == (col["plan"] == "global")


def test_weights_of_the_fused_score(client, collection):
    got = search(client, collection.split.texts[0], ("tokenflow",), k=4, w_global=0.5, w_fine=2.0)["plans"][0]
    assert (got["w_global"], got["w_fine"]) == (0.5, 2.0)
    for r in got["results"]:
        assert r["score"] == pytest.approx(0.5 * r["global"] + 2.0 * r["fine"], abs=1e-5)


@pytest.mark.parametrize("plan, hp", [("tokenflow", {}), ("scan", {"lam": 5}), ("sinkhorn", {})])
def test_explanation_numbers_are_the_plan_of_the_ranked_pair(client, collection, plan, hp):
    query = collection.split.texts[5]
    top = search(client, query, (plan,), k=3, hparams={plan: hp})["plans"][0]["results"]
    item = top[1]["id"]
    r = client.post("/api/explain", json={"query": query, "item": item, "plan": plan, "hparams": hp})
    assert r.status_code == 200, r.text
    ex = r.json()
    from tokenflow.index import FeatureStore

    store = FeatureStore(collection.root / "store")
    row = store.ids.index(item)
    with torch.no_grad():
        txt = collection.model.encode_text_strings([query])
        ref = get_aligner(plan, **hp).plan(store.tokens([row]), txt)
    assert ex["source"] == "store" and ex["direction"] == "t2v" and ex["grid"] == [4, 4]
    if plan == "tokenflow":  # its own token weights (eq 14), which Plan.d and Plan.e are
        d, e, kind = ref.d, ref.e, "plan"
    else:  # no token weights of its own: each patch's and word's share of the fine score
        d, e, kind = (ref.c * ref.t2v).sum(1), (ref.c * ref.t2v).sum(0), "score-share"
    assert ex["weights"] == kind and ex["weights_label"]
    torch.testing.assert_close(torch.tensor(ex["d"]), d.float())
    torch.testing.assert_close(torch.tensor(ex["e"]), e.float())
    assert ex["score"] == pytest.approx(float((ref.c * ref.t2v).sum()), abs=1e-6)
    assert ex["score"] == pytest.approx(top[1]["fine"], abs=1e-5)  # the score the search ranked by
    assert ex["global_score"] == pytest.approx(top[1]["global"], abs=1e-5)
    assert ex["tokens"][0] == "<bos>" and len(ex["tokens"]) == ref.c.shape[1]
    contrib = [p["T_hat_x_c"] for p in ex["top_pairs"]]
    assert len(contrib) == 6 and contrib == sorted(contrib, reverse=True)
    for p in ex["top_pairs"]:
        s, t = p["patch"], p["token"]
        assert p["T_hat_x_c"] == pytest.approx(100 * float(ref.t2v[s, t] * ref.c[s, t]), rel=1e-5)
        assert (p["row"], p["col"]) == divmod(s, 4) and p["word"] == ex["tokens"][t]


def test_thumbnails(collection, monkeypatch):
    from fastapi.testclient import TestClient
    from PIL import Image

    from tokenflow.serve import app as app_module

    client = TestClient(create_app(collection.index, collection.model_dir), base_url="http://127.0.0.1")
    engine, made = client.app.state.engine, []
    real = app_module.thumbnail_png

    def counted(path, **kw):  # made while holding a slot, like a query; once per item
        assert engine._busy._value == engine.limits.workers - 1
        made.append(path)
        return real(path, **kw)

    monkeypatch.setattr(app_module, "thumbnail_png", counted)
    item = collection.split.item_ids[2]
    r = client.get(f"/media/{item}")
    assert client.get(f"/media/{item}").content == r.content and len(made) == 1
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    source = Image.open(collection.split.item_paths[2])
    assert im.size == source.size and max(im.size) <= 256


@pytest.mark.parametrize("url", ["/media/..%2F..%2F..%2Fetc%2Fpasswd", "/media/../../etc/passwd", "/media/%2Fetc%2Fpasswd",
                                 "/media/etc/passwd", "/media/nope", "/media/"])
def test_media_takes_an_item_id_never_a_path(client, url):
    r = client.get(url)
    assert r.status_code == 404 and "error" in r.json()
    assert b"root:" not in r.content


@pytest.fixture(scope="module")
def tricky(collection, tmp_path_factory):
    """A collection whose stored paths try to leave the root: a symlink to a file outside, a path
    with ``..`` and an absolute path elsewhere, a symlink loop, a missing file."""
    from fastapi.testclient import TestClient

    from tokenflow.index import Indexer, write_store

    from ..align.conftest import make_tokens

    base = tmp_path_factory.mktemp("tricky")
    root, outside = base / "collection", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "ok.png").write_bytes(png_bytes())
    (outside / "secret.png").write_bytes(png_bytes(color=(0, 0, 0)))
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    paths = {"ok": root / "ok.png", "link": root / "link.png", "dotdot": f"{root}/sub/../../outside/secret.png",
             "abs": outside / "secret.png", "loop": root / "loop.png", "missing": root / "missing.png",
             "dir": root / "sub"}
    dim = collection.model.embed_dim
    vis = make_tokens(len(paths), 16, dim, gen=torch.Generator().manual_seed(0), dtype=torch.float32)
    write_store(base / "store", vis, list(paths), [str(p) for p in paths.values()], kind="visual",
                backbone={"name": "random"}, dtype="fp32")
    app = create_app(Indexer().index(base / "store"), collection.model, media_root=root)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.parametrize("item, status", [("ok", 200), ("link", 403), ("dotdot", 403), ("abs", 403), ("loop", 404),
                                          ("missing", 404), ("dir", 404)])
def test_media_never_leaves_the_collection_root(tricky, item, status):
    r = tricky.get(f"/media/{item}")
    assert r.status_code == status, r.text
    if status != 200:
        assert "error" in r.json()


def bad(client, path, status, match, **kw):
    r = client.post(path, **kw)
    assert r.status_code == status, r.text
    assert match in r.json()["error"], r.json()


@pytest.mark.parametrize("body, match", [
    ({"query": "x", "plans": ["nope"]}, "unknown plan 'nope'; this server offers: tokenflow"),
    ({"query": "x", "plans": ["mpa"]}, "unknown plan 'mpa'"),
    ({"query": "x", "plans": ["tokenflow"], "hparams": {"tokenflow": {"lam": "fast"}}}, "lam='fast'"),
    ({"query": "x", "plans": ["tokenflow"], "hparams": {"tokenflow": {"lam": 1e9}}}, "beyond what this server"),
    ({"query": "x", "plans": ["tokenflow"], "hparams": {"tokenflow": {"lam": float("inf")}}},
     "hparams: lam=inf is not finite"),
    ({"query": "x", "plans": [{"name": "sinkhorn", "hparams": {"n_iter": 10**8}}]}, "beyond what this server"),
    ({"query": "x", "plans": ["tokenflow"], "hparams": {"tokenflow": {"alpha": 1}}},
     "'alpha' is not a hyperparameter of plan 'tokenflow' (valid: lam)"),
    ({"query": "x", "plans": ["tokenflow"], "hparams": {"tokenflow": [1]}}, "must be an object"),
    ({"query": "x", "plans": ["global"], "hparams": {"global": {"lam": 1}}}, "takes no hyperparameters"),
    ({"query": "x", "plans": ["tokenflow", "max-avg", "scan"]}, "give 1 to 2 plans"),
    ({"query": "x", "plans": []}, "give 1 to 2 plans"),
    ({"query": "x", "plans": "tokenflow", "k": 0}, "k must be an integer from 1 to 50"),
    ({"query": "x", "k": 51}, "k must be an integer from 1 to 50"),
    ({"query": "x", "k": "5"}, "k must be an integer"),
    ({"query": "x", "k": True}, "k must be an integer"),
    ({"query": "x", "w_fine": float("nan")}, "w_fine must be a finite number"),
    ({"query": "x", "w_fine": 1e6}, "w_fine must be a finite number"),
    ({"query": "x" * 501}, "query of 501 characters: at most 500"),
    ({"query": "   "}, "non-empty text"),
    ({"query": 3}, "non-empty text"),
    ({}, "non-empty text"),
])
def test_bad_search_requests(client, body, match):
    bad(client, "/api/search", 400, match, content=json.dumps(body), headers={"Content-Type": "application/json"})


def test_bad_requests_of_any_kind(client, collection):
    query = collection.split.texts[0]
    item = collection.split.item_ids[0]
    bad(client, "/api/search", 400, "not valid JSON", content=b"{", headers={"Content-Type": "application/json"})
    bad(client, "/api/search", 400, "must be a JSON object", json=[1, 2])
    bad(client, "/api/search", 415, "send JSON", content=b"query=x", headers={"Content-Type": "text/plain"})
    bad(client, "/api/search", 413, "request body over", json={"query": "x", "pad": "y" * (5 * 2**20)})
    bad(client, "/api/search", 400, "collection of images or videos: the query is a text",
        data={"request": json.dumps({"k": 3})}, files={"image": ("q.png", png_bytes(), "image/png")})
    bad(client, "/api/explain", 404, "no item 'nope'", json={"query": query, "item": "nope", "plan": "tokenflow"})
    bad(client, "/api/explain", 400, "global ranking has no token plan", json={"query": query, "item": item,
                                                                               "plan": "global"})
    bad(client, "/api/explain", 400, "unknown plan", json={"query": query, "item": item, "plan": "../x"})
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80", "", "[::1]evil.example",
                 "[::1]:80@evil", "127.0.0.1:abc", "localhost.", "localhost:80:80", " localhost"):
        r = client.get("/api/info", headers={"Host": host})  # DNS rebinding: a foreign Host is refused
        assert r.status_code == 400 and "is not served here" in r.json()["error"], host
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/search").status_code == 405


def test_a_body_without_length_is_cut_while_it_streams(client):
    def chunks():
        for _ in range(80):
            yield b"x" * 65536

    r = client.post("/api/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]


@pytest.fixture(scope="module")
def text_client(collection):
    from fastapi.testclient import TestClient

    app = create_app(collection.text_index, collection.model_dir, limits=Limits(max_upload_bytes=200_000,
                                                                                 max_image_pixels=1_000_000))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def upload(client, path, request: dict, data: bytes, name="q.png", mime="image/png"):
    return client.post(path, data={"request": json.dumps(request)}, files={"image": (name, data, mime)})


def test_an_uploaded_image_searches_a_text_collection_and_is_explained(text_client, collection):
    from PIL import Image

    from tokenflow.index import FeatureStore

    image_path = collection.split.item_paths[4]
    data = image_path.read_bytes()
    r = upload(text_client, "/api/search", {"k": 4, "plans": ["tokenflow", "global"]}, data)
    assert r.status_code == 200, r.text
    col = r.json()["plans"][0]
    model = collection.model
    with torch.no_grad():
        vis = model.encode_images(model.preprocess(Image.open(image_path).convert("RGB")).unsqueeze(0))
    want = Searcher(collection.text_index, model=model, aligner=get_aligner("tokenflow")).search(vis, k=4)[0]
    assert [x["id"] for x in col["results"]] == want.ids and all(x["media"] is None for x in col["results"])
    texts = FeatureStore(collection.text_index.parent).texts
    assert all(x["text"] in texts for x in col["results"])  # the page shows the text, not only its id
    item = want.ids[0]
    r = upload(text_client, "/api/explain", {"item": item, "plan": "tokenflow"}, data)
    assert r.status_code == 200, r.text
    ex = r.json()
    store = FeatureStore(collection.root / "texts")
    ref = get_aligner("tokenflow").plan(vis, store.tokens([store.ids.index(item)]))
    assert ex["direction"] == "v2t" and ex["grid"] == [4, 4]
    torch.testing.assert_close(torch.tensor(ex["d"]), ref.d.float())
    torch.testing.assert_close(torch.tensor(ex["e"]), ref.e.float())
    assert ex["score"] == pytest.approx(float((ref.c * ref.v2t).sum()), abs=1e-6)
    # the caption's own words (the tiny tokenizer's words and punctuation), not #1, #2, ...
    words = re.findall(r"\w+|[^\w\s]", item.lower())
    assert ex["tokens"] == ["<bos>", *words, "<eos>"] and ex["caption"] == item and ex["tokens_note"] is None
    assert ex["score"] == pytest.approx(col["results"][0]["fine"], abs=1e-5)


def test_uploads_are_capped_and_decoded_safely(text_client):
    req = {"k": 3, "plans": ["tokenflow"]}
    from PIL import Image

    bomb = io.BytesIO()  # 2000 x 2000 = 4M pixels in a few kB: refused from its header
    Image.new("1", (2000, 2000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 200_000
    cases = [(bomb.getvalue(), "q.png", 413, "2000 x 2000 = 4000000 pixels, at most 1000000 allowed"),
             (png_bytes(size=(60, 60), mode="RGB", fmt="TIFF"), "q.tif", 400, "not an image PIL can read"),
             (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "q.png", 400, "not an image PIL can read"),
             (png_bytes()[:60], "q.png", 400, "not an image PIL can read (upload 'q.png', image/png: "),
             (b"", "q.png", 400, "empty"),
             (b"x" * 210_000, "q.png", 413, "more than the 200000 allowed"),
             (b"x" * 300_000, "q.png", 413, "request body over")]
    for data, name, status, match in cases:
        r = upload(text_client, "/api/search", req, data, name=name)
        assert r.status_code == status, (name, r.text)
        assert match in r.json()["error"], r.json()
    bad(text_client, "/api/search", 400, "collection of texts: the query is an uploaded image",
        json={"query": "a red circle", **req})
    bad(text_client, "/api/search", 400, "without an 'image' file", data={"request": json.dumps(req)},
        files={"other": ("a.txt", b"x", "text/plain")})


def test_videos_are_explained_on_their_middle_frame(collection):
    from fastapi.testclient import TestClient
    from PIL import Image

    from tokenflow.data import read_video_frames
    from tokenflow.viz import explain

    videos = collection.video_split
    query = videos.texts[0]
    item, path = videos.item_ids[1], videos.item_paths[1]
    aligner = get_aligner("tokenflow")
    ref = explain(collection.model_dir, path, query, aligner=aligner)  # tokenflow explain's numbers
    for index, source in ((collection.video_patches_index, "store"), (collection.video_frames_index, "media")):
        with TestClient(create_app(index, collection.model_dir), base_url="http://127.0.0.1") as c:
            ex = c.post("/api/explain", json={"query": query, "item": item, "plan": "tokenflow"}).json()
            assert ex["source"] == source and ex["grid"] == [4, 4], ex
            torch.testing.assert_close(torch.tensor(ex["d"]), ref.d, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(torch.tensor(ex["e"]), ref.e, atol=1e-5, rtol=1e-4)
            assert ex["score"] == pytest.approx(ref.score, abs=1e-5)
            thumb = Image.open(io.BytesIO(c.get(f"/media/{item}").content)).convert("RGB")
    frames = read_video_frames(path, 12)
    middle = frames[len(frames) // 2 - 1].convert("RGB")
    middle.thumbnail((256, 256))
    assert thumb.tobytes() == middle.tobytes()


def test_a_text_collection_serves_no_media(text_client, collection):
    from tokenflow.index import FeatureStore

    from urllib.parse import quote

    item = FeatureStore(collection.text_index.parent).ids[0]
    r = text_client.get(f"/media/{quote(item)}")
    assert r.status_code == 404 and "no media" in r.json()["error"]


def test_host_header_parsing():
    from tokenflow.serve.app import HostCheck, host_name

    assert [host_name(h) for h in ("[::1]:8000", "LocalHost:80", "127.0.0.1", "[::1]")] == \
        ["::1", "localhost", "127.0.0.1", "::1"]
    assert [host_name(h) for h in ("[::1]evil", "a:b", "a b", "", "x@y", "a:123456")] == [None] * 6
    assert HostCheck(None, ["*"]).allowed is None and HostCheck(None, ["[::1]", "LOCALHOST"]).allowed == {"::1", "localhost"}


def test_serve_encodes_queries_on_its_device(collection):
    """``serve --device D``: the model moves to D with the plans, so queries are encoded there too
    (it stayed on the CPU while only the re-ranking ran on D); the backbone check ran first."""
    engine = create_app(collection.index, collection.model_dir, device="meta").state.engine
    assert engine.model.device.type == "meta" and engine.base.model is engine.model
