"""The page's script (static/app.js) run by Node against a stub DOM, a stub ``fetch`` and a stub
``Image``: a failed search leaves no result cards of an earlier one, "why?" explains the query its
card came from, and a reply that arrives after a newer search or a newer "why?" changes nothing on
the page. Skipped when Node is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tokenflow.serve

NODE = shutil.which("node")
APP_JS = Path(tokenflow.serve.__file__).parent / "static" / "app.js"
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")

#: A stub DOM just large enough for app.js, then the script, then ``SCENARIO`` (which prints JSON).
#: ``node harness.js app.js OPTIONS``: OPTIONS is JSON, ``{"query": "image"}`` for an image-query
#: collection (a text collection searched with an uploaded image).
#: Replies: ``api/search`` answers ``k`` results (2 when k is unset) whose ids are "<query>-a", ...;
#: ``api/explain`` answers an explanation of its item. ``control.hold()`` keeps every reply back until
#: ``control.release(path, key, ok)`` (key: the search's query or the explained item) lets it through;
#: ``control.holdImages()`` does the same for images, let through by ``control.loadImages()``.
HARNESS = r"""
const vm = require("vm");
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.listeners = {}; this.textContent = "";
    this.hidden = false; this.value = ""; this.dataset = {}; this.className = ""; this.files = [];
    const classes = this.classes = new Set();
    this.classList = { add: (c) => classes.add(c), remove: (c) => classes.delete(c), contains: (c) => classes.has(c) };
    this.style = {}; }
  setAttribute(k, v) { this.attrs[k] = v; if (k === "class") v.split(/\s+/).forEach((c) => this.classes.add(c)); }
  append(...nodes) { this.children.push(...nodes); }
  replaceChildren() { this.children = []; }
  addEventListener(kind, fn) { this.listeners[kind] = fn; }
  querySelector() { return this.tbody || (this.tbody = new Node("tbody")); }
  getContext() { return new Proxy({}, { get: (t, k) => k in t ? t[k] : () => ({ data: [], width: 10 }) }); }
  all() { return [this, ...this.children.flatMap((c) => c.all())]; }
}
const ids = {};
const $ = (id) => ids[id] || (ids[id] = new Node(id));
const document = {
  getElementById: $,
  createElement: (tag) => new Node(tag),
  createTextNode: (text) => new Node("#text"),
  // ".a.b": the nodes under #columns with classes a and b
  querySelectorAll: (sel) => $("columns").all().filter((n) => sel.split(".").filter(Boolean).every((c) => n.classes.has(c))),
};
const options = JSON.parse(process.argv[3] || "{}");
class FormData {
  constructor() { this.fields = {}; }
  append(k, v) { this.fields[k] = v; }
}
const created = [], revoked = [];
let urls = 0;
const URL = {
  createObjectURL: (file) => { const u = `blob:${file.name}#${++urls}`; created.push(u); return u; },
  revokeObjectURL: (u) => revoked.push(u),
};
const images = [];
let holdImages = false;
class Image {  // loads on the next turn (or when let through); a revoked object URL fails, as in a browser
  constructor() { this.width = 64; this.height = 48; }
  set src(v) { this._src = v; images.push(this); if (!holdImages) setTimeout(() => this.load(), 0); }
  get src() { return this._src; }
  load() { if (revoked.includes(this._src)) this.onerror(); else this.onload(); }
}
const requests = [], held = [];
let searchFails = false, holding = false;
const reply = (ok, data) => ({ ok, status: ok ? 200 : 400, json: async () => data });
function answer(req, ok) {
  if (req.path === "api/search") {
    if (!ok) return reply(false, { error: "the search failed" });
    const results = ["a", "b", "c", "d"].slice(0, req.body.k || 2).map((id, i) => ({ id: `${req.body.query}-${id}`,
      rank: i + 1, score: 0.5, global: 0.4, fine: 0.1, text: id, media: options.query === "image" ? null : `media/${id}.png` }));
    return reply(true, { plans: [{ plan: "tokenflow", hparams: {}, results, w_global: 1, w_fine: 1 }] });
  }
  if (!ok) return reply(false, { error: `no explanation of ${req.body.item}` });
  return reply(true, { plan: req.body.plan, direction: "T2V", frame: null, grid: [2, 2], d: [1, 2, 3, 4],
    markers: [{ row: 0, col: 1, label: "1" }], weights: "plan", weights_label: "", tokens_note: "",
    tokens: ["<bos>", "red"], e: [0.2, 0.8], top_pairs: [{ token: 1, word: "red", row: 0, col: 1, T_hat: 1, c: 0.5, T_hat_x_c: 0.5 }],
    score: 0.1, global_score: 0.4, source: "store" });
}
async function fetch(path, init) {
  let body = null, file = null;
  if (init && init.body instanceof FormData) {
    body = JSON.parse(init.body.fields.request);
    file = init.body.fields.image.name;
  } else if (init) body = JSON.parse(init.body);
  const req = { path, body, file };
  requests.push(req);
  if (path === "api/info") {
    return reply(true, { count: 2, kind: options.query === "image" ? "text" : "visual", backbone: "tiny", w_global: 1,
      w_fine: 1, query: options.query || "text", limits: { max_k: 50, max_query_chars: 500 },
      plans: ["tokenflow", "global"], default_plans: ["tokenflow"], plan_source: { tokenflow: "fresh", global: "fresh" } });
  }
  if (!holding) return answer(req, !(searchFails && path === "api/search"));
  return new Promise((resolve) => held.push({ req, resolve }));
}
const tick = () => new Promise((r) => setTimeout(r, 0));
const control = {
  requests, created, revoked, images,
  fail: (v) => { searchFails = v; },
  hold: () => { holding = true; },
  // let one held reply through: the search for query `key`, or the explanation of item `key`
  release: async (path, key, ok = true) => {
    const i = held.findIndex((h) => h.req.path === path && (path === "api/search" ? h.req.body.query : h.req.body.item) === key);
    if (i < 0) throw new Error(`no held ${path} for ${key}`);
    const { req, resolve } = held.splice(i, 1)[0];
    resolve(answer(req, ok));
    await tick(); await tick();
  },
  holdImages: () => { holdImages = true; },
  loadImages: async () => { holdImages = false; images.forEach((img) => img.load()); await tick(); await tick(); },
};
const context = vm.createContext({ document, fetch, console, Proxy, Promise, JSON, Object, Number, Math,
  performance: { now: () => 0 }, Error, isNaN, String, FormData, URL, Image, setTimeout });
vm.runInContext(require("fs").readFileSync(process.argv[2], "utf8"), context);
context.out = (value) => console.log(JSON.stringify(value));
context.control = control;
context.tick = tick;
const cards = () => $("columns").all().filter((n) => n.classes.has("result"));
context.cards = cards;
context.whyOf = (n) => cards()[n].children.find((c) => c.attrs.class === "why").listeners.click();
// what the explanation panel shows (the names given to the scenario must not be those of app.js's functions)
context.panel = () => ({ hidden: $("explain").hidden, title: $("ex-title").textContent, scores: $("ex-scores").textContent,
  words: $("words").children.length, pairs: $("pairs").querySelector("tbody").children.length, drawn: $("heat").dataset.drawn || null,
  selected: cards().filter((n) => n.classes.has("selected")).map((n) => n.attrs["data-id"]) });
context.shown = () => ({ text: $("status").textContent, error: $("status").className === "error" });
(async () => { await tick(); await vm.runInContext(`(async () => { SCENARIO })()`, context); })()
  .catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture
def page(tmp_path):
    """``page(SCENARIO, query="image")``: run app.js with SCENARIO under the stub DOM; its ``out(...)``, parsed."""
    def run(scenario: str, **options) -> dict:
        script = tmp_path / "harness.js"
        script.write_text(HARNESS.replace("SCENARIO", scenario))
        done = subprocess.run([NODE, str(script), str(APP_JS), json.dumps(options)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])
    return run


SCENARIO = r"""
  $("query").value = "red circle";
  await search();
  const first = cards().length;
  $("query").value = "a newer query, never searched";
  await whyOf(0);
  const explained = control.requests.filter((r) => r.path === "api/explain").map((r) => r.body.query);
  control.fail(true);
  await search();
  out({ first, explained, after_failure: cards().length, status: $("status").textContent });
"""


@needs_node
def test_a_failed_search_clears_the_cards_and_why_explains_its_own_query(page):
    got = page(SCENARIO)
    assert got["first"] == 2  # two result cards for the first search
    assert got["explained"] == ["red circle"]  # the card's query, not what the box holds now
    assert got["after_failure"] == 0, "a failed search left the cards of the previous one on screen"
    assert got["status"] == "the search failed"


@needs_node
@pytest.mark.parametrize("slow_ok", [True, False], ids=["slow-succeeds", "slow-fails"])
def test_an_older_search_answered_last_does_not_overwrite_the_newer_one(page, slow_ok):
    got = page(r"""
      control.hold();
      $("query").value = "slow"; $("k").value = "3"; const slow = search();
      $("query").value = "fast"; $("k").value = "2"; const fast = search();
      await control.release("api/search", "fast"); await fast;
      await control.release("api/search", "slow", SLOW_OK); await slow;
      out({ ids: cards().map((n) => n.attrs["data-id"]), status: shown() });
    """.replace("SLOW_OK", json.dumps(slow_ok)))
    assert got["ids"] == ["fast-a", "fast-b"], "the older search's reply replaced the newer one's cards"
    assert got["status"] == {"text": "2 results in 0 ms", "error": False}


@needs_node
@pytest.mark.parametrize("a_ok", [True, False], ids=["a-succeeds", "a-fails"])
def test_two_why_replies_out_of_order_show_the_last_clicked_card(page, a_ok):
    got = page(r"""
      $("query").value = "q"; await search();
      control.hold();
      const a = whyOf(0), b = whyOf(1);
      await control.release("api/explain", "q-b"); await b;
      await control.release("api/explain", "q-a", A_OK); await a;
      out({ panel: panel(), status: shown() });
    """.replace("A_OK", json.dumps(a_ok)))
    assert got["panel"]["selected"] == ["q-b"]
    assert got["panel"]["title"] == "tokenflow (T2V): q-b", "the panel shows an explanation of another card"
    assert not got["panel"]["hidden"] and got["panel"]["drawn"] == "1"
    assert got["status"] == {"text": "tokenflow: why q-b matched", "error": False}


@needs_node
def test_a_search_begun_while_an_explanations_image_loads_leaves_the_panel_empty(page):
    got = page(r"""
      $("query").value = "q"; await search();
      control.holdImages();
      const a = whyOf(0);
      await tick(); await tick();  // the explanation has come; its image is loading
      control.hold();
      $("query").value = "newer"; const newer = search();
      await control.loadImages(); await a;
      out({ panel: panel(), status: shown() });
    """)
    assert got["panel"] == {"hidden": True, "title": "", "scores": "", "words": 0, "pairs": 0, "drawn": None,
                            "selected": []}, "an explanation of an old result was drawn after a new search began"
    assert got["status"] == {"text": "searching...", "error": False}


@needs_node
def test_image_query_why_explains_the_image_its_card_was_searched_with(page):
    got = page(r"""
      const pick = (name) => { $("image").files = [{ name }]; $("image").listeners.change(); };
      await search();
      const without = shown();
      pick("first.png");
      await search();
      pick("second.png");  // a new image chosen, not yet searched with
      await whyOf(0);
      const explained = control.requests.filter((r) => r.path === "api/explain").map((r) => r.file);
      const drawn = control.images.map((img) => img.src), revokedAtWhy = [...control.revoked];
      const atWhy = { panel: panel(), status: shown() };
      await search();
      const searched = control.requests.filter((r) => r.path === "api/search").map((r) => r.file);
      out({ without, explained, drawn, revokedAtWhy, atWhy, searched, created: control.created, revoked: control.revoked });
    """, query="image")
    assert got["without"] == {"text": "choose an image to search with", "error": True}
    assert got["explained"] == ["first.png"], "why? uploaded an image the card's results are not of"
    assert len(got["drawn"]) == 1 and got["drawn"][0].startswith("blob:first.png")
    assert got["revokedAtWhy"] == [], "an object URL was revoked while a card still used it"
    assert got["atWhy"]["panel"]["drawn"] == "1" and not got["atWhy"]["panel"]["hidden"]
    assert got["atWhy"]["status"]["error"] is False
    assert got["searched"] == ["first.png", "second.png"]
    # the new search's cards no longer use the first image's URL: it is revoked, the second's is not
    assert got["revoked"] == [got["drawn"][0]]
    assert len(got["created"]) == 2 and got["created"][1].startswith("blob:second.png")


@needs_node
def test_a_failed_why_empties_the_panel(page):
    got = page(r"""
      $("query").value = "q"; await search();
      await whyOf(0);
      const first = panel();
      control.hold();
      const b = whyOf(1);
      await control.release("api/explain", "q-b", false); await b;
      out({ first, after: panel(), status: shown() });
    """)
    assert got["first"]["title"] == "tokenflow (T2V): q-a" and not got["first"]["hidden"]
    after = got["after"]
    assert (after["hidden"], after["title"], after["drawn"], after["words"]) == (True, "", None, 0), \
        "a failed why? left the previous card's explanation in the panel"
    assert got["status"] == {"text": "no explanation of q-b", "error": True}


@needs_node
def test_a_stale_why_failure_leaves_the_newer_searchs_status(page):
    got = page(r"""
      $("query").value = "q"; await search();
      control.hold();
      const a = whyOf(0);
      $("query").value = "newer"; const newer = search();
      await control.release("api/search", "newer"); await newer;
      await control.release("api/explain", "q-a", false); await a;
      out({ ids: cards().map((n) => n.attrs["data-id"]), status: shown(), panel: panel() });
    """)
    assert got["ids"] == ["newer-a", "newer-b"]
    assert got["status"] == {"text": "2 results in 0 ms", "error": False}, "an old why?'s error replaced the status"
    assert got["panel"]["hidden"] is True


@needs_node
def test_the_script_parses():
    run = subprocess.run([NODE, "--check", str(APP_JS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
