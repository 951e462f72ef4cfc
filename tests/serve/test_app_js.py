"""The page's script (static/app.js) run by Node against a stub DOM and a stub ``fetch``: a failed
search leaves no result cards of an earlier one, and "why?" explains the query its card came from.
Skipped when Node is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tokenflow.serve

NODE = shutil.which("node")
APP_JS = Path(tokenflow.serve.__file__).parent / "static" / "app.js"

#: A stub DOM just large enough for app.js, then the script, then ``SCENARIO`` (which prints JSON).
HARNESS = r"""
const vm = require("vm");
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.listeners = {}; this.textContent = "";
    this.hidden = false; this.value = ""; this.dataset = {}; this.className = "";
    this.classList = { add() {}, remove() {} }; }
  setAttribute(k, v) { this.attrs[k] = v; }
  append(...nodes) { this.children.push(...nodes); }
  replaceChildren() { this.children = []; }
  addEventListener(kind, fn) { this.listeners[kind] = fn; }
  querySelector() { return this.tbody || (this.tbody = new Node("tbody")); }
  getContext() { return new Proxy({}, { get: () => () => ({ data: [] }) }); }
  all() { return [this, ...this.children.flatMap((c) => c.all())]; }
}
const ids = {};
const document = {
  getElementById: (id) => ids[id] || (ids[id] = new Node(id)),
  createElement: (tag) => new Node(tag),
  createTextNode: (text) => new Node("#text"),
  querySelectorAll: () => [],
};
const requests = [];
let searchFails = false;
async function fetch(path, init) {
  const body = init ? JSON.parse(init.body) : null;
  requests.push({ path, body });
  const reply = (ok, data) => ({ ok, status: ok ? 200 : 400, json: async () => data });
  if (path === "api/info") {
    return reply(true, { count: 2, kind: "visual", backbone: "tiny", w_global: 1, w_fine: 1, query: "text",
      limits: { max_k: 50, max_query_chars: 500 }, plans: ["tokenflow", "global"], default_plans: ["tokenflow"],
      plan_source: { tokenflow: "fresh", global: "fresh" } });
  }
  if (path === "api/search") {
    if (searchFails) return reply(false, { error: "the search failed" });
    const results = ["a", "b"].map((id, i) => ({ id, rank: i + 1, score: 0.5, global: 0.4, fine: 0.1,
      text: id, media: null }));
    return reply(true, { plans: [{ plan: "tokenflow", hparams: {}, results, w_global: 1, w_fine: 1 }] });
  }
  return reply(false, { error: "no explanation in this test" });
}
const context = vm.createContext({ document, fetch, console, Proxy, Promise, JSON, Object, Number, Math,
  performance: { now: () => 0 }, Error, isNaN, String, FormData: class {}, URL: {} });
vm.runInContext(require("fs").readFileSync(process.argv[2], "utf8"), context);
context.out = (value) => console.log(JSON.stringify(value));
context.control = { requests, fail: (v) => { searchFails = v; } };
const tick = () => new Promise((r) => setTimeout(r, 0));
context.tick = tick;
const cards = () => ids.columns.all().filter((n) => n.attrs.class === "result");
context.cards = cards;
(async () => { await tick(); await vm.runInContext(`(async () => { SCENARIO })()`, context); })();
"""

SCENARIO = r"""
  const $ = (id) => document.getElementById(id);
  $("query").value = "red circle";
  await search();
  const first = cards().length;
  $("query").value = "a newer query, never searched";
  const why = cards()[0].children.find((n) => n.attrs.class === "why");
  await why.listeners.click();
  const explained = control.requests.filter((r) => r.path === "api/explain").map((r) => r.body.query);
  control.fail(true);
  await search();
  out({ first, explained, after_failure: cards().length, status: $("status").textContent });
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_a_failed_search_clears_the_cards_and_why_explains_its_own_query(tmp_path):
    script = tmp_path / "harness.js"
    script.write_text(HARNESS.replace("SCENARIO", SCENARIO))
    run = subprocess.run([NODE, str(script), str(APP_JS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["first"] == 2  # two result cards for the first search
    assert got["explained"] == ["red circle"]  # the card's query, not what the box holds now
    assert got["after_failure"] == 0, "a failed search left the cards of the previous one on screen"
    assert got["status"] == "the search failed"


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_the_script_parses():
    run = subprocess.run([NODE, "--check", str(APP_JS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
