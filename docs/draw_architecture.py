"""Draw docs/architecture.svg: the data flow, the path from a trained folder to a score, the layers.

Plain Python writing SVG by hand (no plotting library), so the picture can be redrawn anywhere:

    python docs/draw_architecture.py

The output is deterministic; ``tests/test_docs.py`` checks that the committed SVG is what this
script draws, so edit the script and re-run it rather than editing the SVG.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

WIDTH, HEIGHT = 1180, 640
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"

# Fill colours by role.
DATA, CORE, OUT, FOLDER, APP = "#e7f0fb", "#e6f4e6", "#fdeedd", "#efe7f7", "#f3f3f3"

# The layers of tests/test_layers.py, lowest first: (modules, what they are).
LAYERS = [
    (["_extras, _version, errors, utils,", "tokens, distributed"], "Tokens, errors, collectives"),
    (["losses"], "InfoNCE, sigmoid, distillation, set, CS"),
    (["align (and the package root)"], "Aligner, plans, transport/, registry"),
    (["data, models"], "datasets, backbones, scoring"),
    (["eval"], "metrics, compositional, sharded eval"),
    (["train, viz"], "trainer, run folder, explain figures"),
    (["bench, demo, index, serve"], "apps over the library"),
    (["cli, __main__"], "the tokenflow command"),
]


def text(x: float, y: float, s: str, size: int = 12, weight: str = "normal", anchor: str = "middle",
         family: str = FONT, colour: str = "#222") -> str:
    return (f'<text x="{x:g}" y="{y:g}" font-family="{family}" font-size="{size}" font-weight="{weight}" '
            f'text-anchor="{anchor}" fill="{colour}">{escape(s)}</text>')


def box(x: float, y: float, w: float, h: float, title: str, lines: list[str], fill: str,
        dashed: bool = False) -> str:
    """A rounded box with a bold title and smaller lines under it, centred."""
    dash = ' stroke-dasharray="5,3"' if dashed else ""
    parts = [f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="7" fill="{fill}" stroke="#444"'
             f' stroke-width="1.2"{dash}/>']
    n = 1 + len(lines)
    top = y + h / 2 - (n - 1) * 7.5 + 4
    parts.append(text(x + w / 2, top, title, 13, "bold"))
    for k, line in enumerate(lines, 1):
        parts.append(text(x + w / 2, top + 15 * k, line, 11, colour="#333"))
    return "\n".join(parts)


def arrow(x1: float, y1: float, x2: float, y2: float, label: str = "", dashed: bool = False) -> str:
    dash = ' stroke-dasharray="5,3"' if dashed else ""
    out = (f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="#444" stroke-width="1.4"'
           f' marker-end="url(#head)"{dash}/>')
    if label:
        out += "\n" + text((x1 + x2) / 2, (y1 + y2) / 2 - 5, label, 10, colour="#555")
    return out


def data_flow() -> list[str]:
    """Part 1: files -> dataset -> batch -> backbone -> Tokens -> aligner -> scores -> loss or metrics."""
    w, h, y = 140, 66, 48
    xs = [20, 185, 350, 515, 680]
    row = [
        ("files", ["images, videos, captions", "in each dataset's layout"], DATA),
        ("dataset", ["data.load_split()", "RetrievalSplit"], DATA),
        ("batch", ["pixels or frames,", "caption token ids"], DATA),
        ("backbone", ["models: CLIP, SigLIP,", "tiny encoder"], DATA),
        ("Tokens", ["feats [N, L, D], mask,", "pooled [N, D]"], CORE),
    ]
    out = [text(20, 30, "1  From files to scores", 15, "bold", "start")]
    for x, (title, lines, fill) in zip(xs, row):
        out.append(box(x, y, w, h, title, lines, fill))
    for a, b in zip(xs, xs[1:]):
        out.append(arrow(a + w, y + h / 2, b - 2, y + h / 2))
    y2 = 160
    out.append(box(680, y2, w, h, "aligner (plan)", ["c = mu_s . omega_t", "T^V, T^T  (eq 8-9)"], CORE))
    out.append(arrow(750, y + h, 750, y2 - 2))
    out.append(box(495, y2, 150, h, "Scores", ["v2t, t2v [N, M]", "w_g global + w_f s"], CORE))
    out.append(arrow(680, y2 + h / 2, 647, y2 + h / 2))
    out.append(box(250, y2 - 12, 200, 40, "loss (train)", ["InfoNCE or sigmoid, + extras"], OUT))
    out.append(box(250, y2 + 38, 200, 40, "metrics (evaluate)", ["R@K, MdR, MnR; hard negatives"], OUT))
    out.append(arrow(495, y2 + 22, 452, y2 + 8))
    out.append(arrow(495, y2 + 44, 452, y2 + 58))
    out.append(arrow(350, y2 - 12, 540, y + h + 2, dashed=True))
    out.append(text(340, y2 - 24, "training: gradients to the backbone and learned plan weights", 10, anchor="end",
                    colour="#555"))
    return out


def scoring_path() -> list[str]:
    """Part 2: a trained folder -> best/ -> load_scoring -> evaluate, explain, encode, index, search/serve."""
    y0 = 290
    out = [text(20, y0, "2  From a trained folder to a score: one path, models.scoring.load_scoring", 15, "bold",
                "start")]
    y = y0 + 25
    out.append(box(20, y, 140, 70, "tokenflow train", ["config.yaml", "-> run.out/"], APP))
    out.append(box(190, y, 180, 70, "run.out/best/", ["backbone files,", "tokenflow.json,", "aligner.safetensors"],
                   FOLDER))
    out.append(arrow(160, y + 35, 188, y + 35))
    out.append(box(400, y, 210, 70, "load_scoring(folder, ...)", ["overrides: plan, hparams,", "w_global, w_fine",
                                                                  "-> Scoring"], FOLDER))
    out.append(arrow(370, y + 35, 398, y + 35))
    right = 650
    for k, (title, line) in enumerate([("evaluate", "metrics of a split"), ("explain", "plan of one pair"),
                                       ("encode", "backbone -> store/")]):
        yy = y - 8 + 48 * k
        out.append(box(right, yy, 170, 40, title, [line], APP))
        out.append(arrow(610, y + 35, right - 2, yy + 20))
    ys = y + 185
    out.append(box(right, ys, 170, 58, "store/", ["token shards +", "manifest.json"], FOLDER))
    out.append(arrow(right + 85, y + 128, right + 85, ys - 2))
    out.append(box(420, ys, 170, 58, "index", ["FAISS over the", "global features"], APP))
    out.append(arrow(right, ys + 29, 592, ys + 29))
    out.append(box(190, ys, 180, 58, "search / serve", ["shortlist, then re-rank", "with the same Scoring"], APP))
    out.append(arrow(420, ys + 29, 372, ys + 29))
    out.append(arrow(470, y + 70, 300, ys - 2, dashed=True))
    out.append(text(368, y + 130, "the same plan and weights", 10, anchor="end", colour="#555"))
    out.append(text(20, HEIGHT - 16, "Every command that scores a trained model goes through load_scoring, so "
                    "evaluate, explain, search and serve agree on a score.", 11, anchor="start", colour="#444"))
    return out


def layers() -> list[str]:
    """Part 3: the import layers, lowest at the bottom."""
    x, w, h, gap, top = 860, 300, 58, 9, 48
    out = [text(x, 22, "3  Layers", 15, "bold", "start"),
           text(x, 38, "each imports only from the layers below it", 11, anchor="start", colour="#444")]
    shades = ["#f7f7f7", "#eef4fb", "#e6f4e6", "#e7f0fb", "#fdf3e6", "#fdeedd", "#efe7f7", "#e9e9e9"]
    for k, (mods, what) in enumerate(LAYERS):
        y = top + (len(LAYERS) - 1 - k) * (h + gap)
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{shades[k]}" stroke="#444"'
                   ' stroke-width="1.1"/>')
        out.append(text(x + 16, y + h / 2 + 5, str(k), 18, "bold"))
        lines = mods + [what]
        y_text = y + h / 2 - (len(lines) - 1) * 7 + 4
        for j, line in enumerate(lines):
            bold = "bold" if j < len(mods) else "normal"
            out.append(text(x + 36, y_text + 14 * j, line, 11 if bold == "normal" else 12, bold, "start",
                            colour="#222" if bold == "bold" else "#555"))
    return out


def render() -> str:
    """The whole picture as an SVG document."""
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}">',
        "<title>tokenflow: data flow, the scoring path and the layers</title>",
        '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="840" y1="16" x2="840" y2="{HEIGHT - 36}" stroke="#bbb" stroke-width="1"/>',
        f'<line x1="20" y1="270" x2="820" y2="270" stroke="#bbb" stroke-width="1"/>',
    ]
    return "\n".join(head + data_flow() + scoring_path() + layers() + ["</svg>"]) + "\n"


def main() -> None:
    out = Path(__file__).with_name("architecture.svg")
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
