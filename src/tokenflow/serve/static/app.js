// tokenflow serve: the page. Plain JS, no build step. Every value from the server is put in the
// page with textContent (never innerHTML), so an item id or a query cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
// seq counts searches and explainSeq explanations asked for (a search counts as one too): a reply
// that comes after a newer request of its kind is dropped, so the page never shows an older one.
// file: the image chosen to search with (image-query mode); fileUrl: an object URL of the image the
// cards now on the page were searched with, revoked when a new search starts.
const state = { info: null, file: null, fileUrl: null, seq: 0, explainSeq: 0 };

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// "lam=20, eps=0.05" -> {lam: 20, eps: 0.05}
function parseHp(text) {
  const out = {};
  for (const part of text.split(/[,\s]+/).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq < 1) throw new Error(`hyperparameter "${part}": write NAME=VALUE`);
    const key = part.slice(0, eq), raw = part.slice(eq + 1);
    out[key] = raw === "true" ? true : raw === "false" ? false : raw !== "" && !isNaN(Number(raw)) ? Number(raw) : raw;
  }
  return out;
}

// file: the query image in image-query mode (the one its search or its card was made with)
async function api(path, body, file) {
  let init;
  if (state.info.query === "image") {
    if (!file) throw new Error("choose an image to search with");
    const form = new FormData();
    form.append("request", JSON.stringify(body));
    form.append("image", file);
    init = { method: "POST", body: form };
  } else {
    init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

// "trained": the model folder's own plan, with its learned weights and hyperparameters;
// "fresh": built anew for this page (learned weights, if the plan has any, untrained).
function planLabel(name, source) {
  return source === "trained" ? `${name} (trained)` : name === "global" ? name : `${name} (fresh)`;
}

async function init() {
  const info = await (await fetch("api/info")).json();
  state.info = info;
  $("collection").textContent = `${info.count} ${info.kind === "visual" ? "images or videos" : "texts"}, ` +
    `backbone ${info.backbone}; score = ${info.w_global} x global + ${info.w_fine} x fine`;
  $("k").max = info.limits.max_k;
  $("query").maxLength = info.limits.max_query_chars;
  for (const [sel, first] of [["planA", info.default_plans[0]], ["planB", info.default_plans[1] || ""]]) {
    if (sel === "planB") $(sel).append(el("option", { value: "" }, "(none)"));
    for (const p of info.plans) $(sel).append(el("option", { value: p }, planLabel(p, info.plan_source[p])));
    $(sel).value = first;
  }
  if (info.query === "image") {
    $("query").hidden = true;
    $("image").hidden = false;
    // the cards on the page keep the image they were searched with: choosing another changes none
    $("image").addEventListener("change", () => { state.file = $("image").files[0] || null; });
  }
  $("search").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  status("ready");
}

// Hide the explanation panel and empty it: a new search leaves no explanation of an old result.
function clearExplanation() {
  $("explain").hidden = true;
  const canvas = $("heat");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.drawn;
  for (const id of ["ex-title", "ex-weights-label", "ex-scores", "ex-tokens-note"]) $(id).textContent = "";
  $("words").replaceChildren();
  $("pairs").querySelector("tbody").replaceChildren();
}

async function search() {
  const plans = [], hparams = {};
  const seq = ++state.seq;
  state.explainSeq += 1;  // an explanation on its way is of an old result
  clearExplanation();
  $("columns").replaceChildren();  // a failed search leaves no cards of an earlier one
  const query = takeQuery();
  try {
    for (const [sel, hp] of [["planA", "hpA"], ["planB", "hpB"]]) {
      const name = $(sel).value;
      if (!name) continue;
      plans.push({ name, hparams: parseHp($(hp).value) });
    }
    const body = { query: query.text, k: Number($("k").value), plans, hparams };
    status("searching...");
    const t0 = performance.now();
    const data = await api("api/search", body, query.file);
    if (seq !== state.seq) return;  // a newer search began meanwhile: its reply, not this one, is shown
    render(data, query);
    status(`${data.plans[0].results.length} results in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    if (seq !== state.seq) return;  // nor does this one's error replace the newer search's status
    status(e.message, true);
  }
}

// The query a new search is made with: {text, file, fileUrl}, file and fileUrl being the image
// chosen (image-query mode, else null). The previous search's image URL is revoked: its cards are gone.
function takeQuery() {
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  const file = state.info.query === "image" ? state.file : null;
  state.fileUrl = file ? URL.createObjectURL(file) : null;
  return { text: $("query").value, file, fileUrl: state.fileUrl };
}

// Each card keeps the query it is a result of (takeQuery): "why?" explains that query, whatever the
// box or the file input holds now.
function render(data, query) {
  const cols = $("columns");
  cols.replaceChildren();
  data.plans.forEach((plan, c) => {
    const other = data.plans.length > 1 ? data.plans[1 - c].results.map((r) => r.id) : null;
    const col = el("div", { class: "column", "data-plan": plan.plan });
    const hp = Object.entries(plan.hparams || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    col.append(el("h2", {}, `${planLabel(plan.plan, plan.plan_source)}${hp ? ` (${hp})` : ""}`));
    if (other) {
      col.append(el("p", { class: "legend" },
        `up / down: rank here against ${data.plans[1 - c].plan}`));
    }
    const list = el("ol");
    plan.results.forEach((r, i) => list.append(card(r, i, plan, other, query)));
    col.append(list);
    cols.append(col);
  });
}

function card(r, i, plan, other, query) {
  const li = el("li", { class: "result", "data-id": r.id, "data-rank": String(r.rank) });
  li.append(el("span", { class: "rank" }, String(r.rank)));
  if (r.media) li.append(el("img", { src: r.media, alt: r.id, loading: "lazy" }));
  else li.append(el("span", { class: "text" }, r.text || r.id));
  const meta = el("div", { class: "meta" });
  const id = el("div", { class: "id" }, r.id);
  if (other) {
    const j = other.indexOf(r.id);
    const badge = j < 0 ? ["new", "not in the other top k"] : j > i ? ["up", `up ${j - i}`] : j < i ? ["down", `down ${i - j}`] : null;
    if (badge) {
      id.append(el("span", { class: `badge ${badge[0]}`, title: "rank compared with the other plan" }, badge[1]));
      li.classList.add("moved");
    }
  }
  meta.append(id);
  const s = el("div", { class: "scores" });
  s.append(el("b", {}, `score ${r.score.toFixed(3)}`));
  s.append(document.createTextNode(r.fine === null
    ? ` = ${plan.w_global} x global ${r.global.toFixed(3)}`
    : ` = ${plan.w_global} x global ${r.global.toFixed(3)} + ${plan.w_fine} x fine ${r.fine.toFixed(3)}`));
  meta.append(s);
  li.append(meta);
  if (plan.plan !== "global") {
    const why = el("button", { class: "why", type: "button" }, "why?");
    why.addEventListener("click", () => explain(r, plan, li, query));
    li.append(why);
  }
  return li;
}

// The panel shows the explanation of the card clicked last: a reply (or an error) that comes after a
// newer "why?" or a new search is dropped, and nothing is written into the panel until the picture
// to draw under the heat map has loaded.
async function explain(r, plan, li, query) {
  const seq = ++state.explainSeq;
  const current = () => seq === state.explainSeq;
  document.querySelectorAll(".result.selected").forEach((n) => n.classList.remove("selected"));
  li.classList.add("selected");
  try {
    status(`explaining ${r.id}...`);
    const body = { query: query.text, item: r.id, plan: plan.plan, hparams: plan.hparams };
    const ex = await api("api/explain", body, query.file);
    if (!current()) return;
    const src = state.info.query === "image" ? query.fileUrl : r.media;
    const img = src ? await loadImage(src) : null;
    if (!current()) return;
    drawExplanation(ex, r, img);
    status(`${plan.plan}: why ${r.id} matched`);
  } catch (e) {
    if (!current()) return;
    clearExplanation();  // leave no other card's explanation beside this card's error
    status(e.message, true);
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot load the image"));
    img.src = src;
  });
}

// matplotlib's "jet", as tokenflow explain draws d
function jet(t) {
  const f = (x) => Math.round(255 * Math.max(0, Math.min(1, x)));
  return [f(1.5 - Math.abs(4 * t - 3)), f(1.5 - Math.abs(4 * t - 2)), f(1.5 - Math.abs(4 * t - 1))];
}

// img: the query image (image-query mode) or the item's, drawn under the heat map; null: none
function drawExplanation(ex, r, img) {
  const box = $("explain");
  box.hidden = false;
  $("ex-title").textContent = `${ex.plan} (${ex.direction}): ${r.id}` + (ex.frame !== null && ex.frame !== undefined ? `, frame ${ex.frame + 1}` : "");
  const canvas = $("heat"), ctx = canvas.getContext("2d");
  const W = canvas.width, [gh, gw] = ex.grid;
  ctx.clearRect(0, 0, W, W);
  if (img) {
    const side = Math.min(img.width, img.height);  // the centre square the model sees
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, (img.width - side) / 2, (img.height - side) / 2, side, side, 0, 0, W, W);
  }
  const lo = Math.min(...ex.d), hi = Math.max(...ex.d), cw = W / gw, ch = W / gh;
  ctx.globalAlpha = 0.45;
  ex.d.forEach((v, s) => {
    const [R, G, B] = jet(hi > lo ? (v - lo) / (hi - lo) : 0.5);
    ctx.fillStyle = `rgb(${R},${G},${B})`;
    ctx.fillRect((s % gw) * cw, Math.floor(s / gw) * ch, cw, ch);
  });
  ctx.globalAlpha = 1;
  ctx.strokeStyle = "rgba(255,255,255,0.5)";
  for (let i = 1; i < gw; i++) { ctx.beginPath(); ctx.moveTo(i * cw, 0); ctx.lineTo(i * cw, W); ctx.stroke(); }
  for (let i = 1; i < gh; i++) { ctx.beginPath(); ctx.moveTo(0, i * ch); ctx.lineTo(W, i * ch); ctx.stroke(); }
  drawMarkers(ctx, ex.markers, cw, ch);
  canvas.dataset.drawn = "1";
  const own = ex.weights === "plan";
  $("ex-weights").textContent = own ? "patch weight" : "patch's share of the fine score";
  $("ex-word-weights").textContent = own ? "word weight" : "word's share of the fine score";
  $("ex-weights-label").textContent = ex.weights_label || "";
  $("ex-tokens-note").textContent = ex.tokens_note || "";
  $("ex-tokens-note").hidden = !ex.tokens_note;
  drawWords(ex);
  drawPairs(ex);
  $("ex-scores").textContent = `fine score ${ex.score.toFixed(4)} (sum of T x c), global ${ex.global_score.toFixed(4)}` +
    (ex.source === "media" ? "; the middle frame encoded again (the store keeps one token per frame)" : "");
}

// One mark per patch (the server groups the pairs: ex.markers), labelled with the numbers of all
// its pairs ("1,3"), as wide as its label, so that pairs on one patch do not hide each other.
function drawMarkers(ctx, markers, cw, ch) {
  ctx.font = "bold 12px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  for (const m of markers) {
    const x = (m.col + 0.5) * cw, y = (m.row + 0.5) * ch;
    const w = Math.max(20, ctx.measureText(m.label).width + 10), h = 20;
    ctx.fillStyle = "crimson";
    ctx.beginPath();
    if (ctx.roundRect) ctx.roundRect(x - w / 2, y - h / 2, w, h, h / 2); else ctx.rect(x - w / 2, y - h / 2, w, h);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.fillText(m.label, x, y);
  }
}

function drawWords(ex) {
  const box = $("words");
  box.replaceChildren();
  const lo = Math.min(...ex.e), hi = Math.max(...ex.e);
  const top = new Set(ex.top_pairs.map((p) => p.token));
  ex.tokens.forEach((w, t) => {
    const shade = 0.15 + 0.75 * (hi > lo ? (ex.e[t] - lo) / (hi - lo) : 0.5);
    const span = el("span", { title: `${ex.weights === "plan" ? "weight" : "share of the score"} ${ex.e[t].toFixed(4)}` }, w);
    span.style.background = `rgba(37, 99, 235, ${shade})`;
    span.style.color = shade > 0.6 ? "#fff" : "#000";
    if (top.has(t)) span.classList.add("top");
    box.append(span);
  });
}

function drawPairs(ex) {
  const body = $("pairs").querySelector("tbody");
  body.replaceChildren();
  ex.top_pairs.forEach((p, n) => {
    const tr = el("tr");
    for (const v of [String(n + 1), p.word, `(${p.row}, ${p.col})`, p.T_hat.toFixed(2), p.c.toFixed(3), p.T_hat_x_c.toFixed(3)]) {
      tr.append(el("td", {}, v));
    }
    body.append(tr);
  });
}

init().catch((e) => status(`cannot load the collection: ${e.message}`, true));
