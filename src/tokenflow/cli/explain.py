"""``tokenflow explain``: the patch and word weights and the strongest flows of one match (figure
4), of a model folder on an image or video, or of stored features; with ``--negative``, a true
and a false caption side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from .common import print_notes, scoring_notes
from .options import add_frames, add_store_options

__all__ = ["add_parsers"]


def _model(args: argparse.Namespace):
    """The :class:`~tokenflow.models.retrieval.RetrievalModel` that ``--model`` is scored with
    (:func:`~tokenflow.viz.explain.scored_model`, the one scoring path: its trained plan with its
    learned weights, or ``--aligner``); what that overrode of the trained folder is printed as a
    note, as evaluate and search do."""
    from ..viz.explain import scored_model

    model, scoring = scored_model(args.model, args.aligner)
    scoring_notes(scoring, "explain")
    return model


def _explain_model(args: argparse.Namespace):
    """``(explanation, (w_global, w_fine))`` of ``--model``, ``--media`` and ``--caption``."""
    from ..viz.explain import explain

    model = _model(args)
    expl = explain(model, args.media, args.caption, direction=args.direction, aligner=args.aligner,
                   num_frames=args.frames)
    return expl, (model.w_global, model.w_fine)


def _explain_stored(args: argparse.Namespace):
    """``--visual-store V --text-store T --item ID --text-id ID``: the
    :class:`~tokenflow.viz.explain.Explanation` of stored features (no image)."""
    from ..index.offline import open_stores, plan_for_stores, store_tokens
    from ..viz.explain import explain_tokens

    need = [f"--{k.replace('_', '-')}" for k in ("visual_store", "text_store", "item", "text_id")
            if getattr(args, k) is None]
    if need:
        raise UserError(f"tokenflow explain from stores needs {', '.join(need)}")
    given = [f"--{k}" for k in ("media", "caption", "boxes") if getattr(args, k, None) is not None]
    if given:
        raise UserError(f"{given[0]}: not used with stored features (the item and caption are --item and --text-id; "
                        "pointing needs the image)")
    vstores = open_stores(args.visual_store, "visual", "--visual-store")
    scoring = plan_for_stores(args.aligner, {}, vstores[0].dim, args.model)
    scoring_notes(scoring, "explain")
    aligner = scoring.aligner
    if aligner is None:  # --aligner offers no "none": only a global-only trained --model gets here
        raise UserError(f"--model {args.model}: has no fine-grained plan (global only); pass --aligner")
    tstores = open_stores(args.text_store, "text", "--text-store")
    vis = store_tokens(vstores, [args.item], "--item: the store")
    txt = store_tokens(tstores, [args.text_id], "--text-id: the store")
    caption = next(s.texts[s.ids.index(args.text_id)] for s in tstores if args.text_id in s.ids)
    return explain_tokens(vis, txt, caption, aligner, direction=args.direction)  # InputError for what users cause


def _contrast(args: argparse.Namespace) -> int:
    """``--negative TEXT``: print the margins and the word pairs that moved the score, draw both
    plans side by side, and (``--json``) save the numbers."""
    from ..utils import write_text_atomic
    from ..viz.contrast import explain_contrast, render_contrast

    if args.model is None or args.media is None or args.caption is None:
        raise UserError("tokenflow explain --negative needs --model, --media and --caption")
    if args.boxes is not None:
        print_notes("explain", ["--boxes (pointing accuracy) is for one caption; not used with --negative"])
    con = explain_contrast(_model(args), args.media, args.caption, args.negative, direction=args.direction,
                           aligner=args.aligner, num_frames=args.frames)
    render_contrast(con, args.out, top=args.top)
    v = con.verdict()
    for name, e in (("true", con.true), ("false", con.false)):
        print(f"{name:>5}: {e.caption!r}: fused {con.fused(e):.4f} = {con.w_global:g} x global {e.global_score:.4f}"
              f" + {con.w_fine:g} x fine {e.score:.4f}")
    print(f"{con.true.aligner} {con.true.direction}: the true caption {'wins' if v['correct'] else 'does not win'} "
          f"by {v['fused']:+.4f} fused (fine {v['fine']:+.4f}, global {v['global']:+.4f}); a tie is a failure")
    print("word pairs that moved the fine score (true -> false: share of the score):")
    for p in con.moved()[: max(args.top, 3)]:
        print(f"  {p['true'] or '(none)':>14} -> {p['false'] or '(none)':<14} {p['true_share']:.4f} -> "
              f"{p['false_share']:.4f} ({p['change']:+.4f})")
    print(f"figure: {args.out}")
    if args.json:
        write_text_atomic(args.json, json.dumps(con.to_dict(args.top), indent=2) + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ..viz import render

    if args.negative is not None:  # a true and a false caption, side by side
        return _contrast(args)
    stored = args.visual_store is not None or args.text_store is not None
    if not stored and (args.model is None or args.media is None or args.caption is None):
        raise UserError("tokenflow explain needs --model, --media and --caption (or --visual-store, --text-store, "
                        "--item and --text-id)")
    objects = None
    if args.boxes is not None and not stored:
        from ..eval.pointing import boxes_for, read_boxes

        objects = boxes_for(read_boxes(args.boxes), args.media)  # a bad sidecar fails before any work
    expl, fusion = (_explain_stored(args), None) if stored else _explain_model(args)
    render(expl, args.out, top=args.top)
    words = [t for t in expl.tokens if not (t.startswith("<") and t.endswith(">"))]
    if not words:
        print(f"tokenflow explain: warning: the model knows none of the caption's words ({args.caption!r} became "
              f"{' '.join(expl.tokens)}); the flows below carry no word's meaning", file=sys.stderr)
    for p in expl.top_pairs(args.top):
        print(f"{p['word']:>12} -> patch ({p['row']}, {p['col']}): T_hat {p['T_hat']:.2f} x c {p['c']:.2f} "
              f"= {p['T_hat_x_c']:.2f}")
    numbers = expl.to_dict(args.top)
    fused = ""
    if fusion is not None:  # the score search, serve and evaluate rank this pair with
        numbers.update(w_global=fusion[0], w_fine=fusion[1], fused_score=fusion[0] * expl.global_score +
                       fusion[1] * expl.score)
        fused = f", score {numbers['fused_score']:.4f} (w_global {fusion[0]:g}, w_fine {fusion[1]:g})"
    print(f"{expl.aligner} {expl.direction}: fine score {expl.score:.4f}, global {expl.global_score:.4f}{fused}; "
          f"figure: {args.out}")
    if objects is not None:
        numbers["pointing"] = _print_pointing(expl, objects)
    if args.json:
        from ..utils import write_text_atomic

        write_text_atomic(args.json, json.dumps(numbers, indent=2) + "\n")
    return 0


def _print_pointing(expl, objects: list[dict]) -> dict:
    """Print whether each object word's strongest patch lies in its object's box; the numbers."""
    pt = expl.pointing(objects)
    for w in pt.words:
        print(f"{w['word']:>12} -> patch {divmod(w['patch'], expl.grid[1])}: "
              f"{'in' if w['hit'] else 'NOT in'} the box of {' '.join(objects[w['object']]['words'])}")
    print(f"pointing: {pt.hits}/{pt.total} object words in their object's box ({pt.accuracy:.1f} %; "
          f"chance {pt.chance_accuracy:.1f} %)" if pt.total else
          "pointing: the caption names none of the boxed objects")
    return {**pt.to_dict(), "per_word": pt.words}


def add_parsers(sub) -> None:
    """Register ``explain``."""
    from ..align import list_aligners

    p = sub.add_parser("explain", help="figure 4: patch and word weights and the strongest flows of one match")
    p.add_argument("--model", type=Path, default=None, help="a trained model folder (run.out/best)")
    p.add_argument("--media", type=Path, default=None, help="an image or a video (its middle frame is shown)")
    p.add_argument("--caption", default=None, help="the text of the match to explain")
    p.add_argument("--negative", default=None, metavar="TEXT",
                   help="a false caption of the same image: draw both plans side by side and print which word "
                        "pairs moved the score")
    add_store_options(p, explain=True)
    p.add_argument("--aligner", default=None, choices=list_aligners(), help="default: the model's plan (stores: "
                   "tokenflow)")
    p.add_argument("--direction", choices=("t2v", "v2t"), default="t2v",
                   help="the plan of text->visual (t2v, default) or visual->text")
    p.add_argument("--top", type=int, default=4, help="arrows for this many word-patch pairs")
    add_frames(p, help="frames sampled from a video")
    p.add_argument("--out", type=Path, default=Path("explain.png"), help="figure (PNG, written atomically)")
    p.add_argument("--boxes", type=Path, default=None,
                   help="object boxes (tokenflow-boxes JSON, e.g. the scenes task's boxes.json): print pointing "
                        "accuracy, whether each object word's strongest patch lies in its object's box")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.set_defaults(func=_explain)
