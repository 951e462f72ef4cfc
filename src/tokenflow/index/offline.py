"""Evaluate, search and explain with feature stores and no backbone: features written by
``tokenflow encode`` or computed elsewhere and brought in by ``tokenflow import-features``.

How store ids map to a dataset split (what ``tokenflow encode`` writes, so that its stores work
here too):

- a visual store's ids are the split's item ids (:attr:`RetrievalSplit.item_ids`: the Karpathy
  JSON's ``cocoid``/``imgid``/file name, MSR-VTT's and MSVD's video ids, ActivityNet's ids);
- a text store's ids are ``ITEM_ID#K``: the caption's item id and K, the caption's index in the
  split's list of captions (:attr:`RetrievalSplit.texts`; ``tokenflow encode --captions``).

A store may hold more rows than the split (the whole dataset); a split item or caption missing
from it is refused, with the count. Scoring is :func:`tokenflow.eval.evaluate.evaluate`'s, on the
stored features.

The compositional evaluation (``tokenflow evaluate-compositional --visual-store V --text-store
T``) has no split: the hard-negative file's entries are matched to store rows instead
(:func:`hard_negative_tokens`). A visual row is an entry's image when its path is the image's
file (a relative path starts at the images folder), or else when its id is the image's path
relative to the images folder, its file name, or its file name without the extension (COCO's
``000000391895``). Captions, the true ones and every negative, are matched by their text (a
text store written with ``texts``). Entries missing from a store are refused, with the count.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokens import Tokens
from .importer import store_source
from .store import FeatureStore

__all__ = ["caption_ids", "compositional_stores", "evaluate_stores", "hard_negative_tokens", "open_stores",
           "plan_for_stores", "split_tokens", "store_tokens"]


def caption_ids(split) -> list[str]:
    """The text store id of each caption of ``split``: ``ITEM_ID#K`` (K: its index in the split)."""
    return [f"{split.item_ids[i]}#{k}" for k, i in enumerate(split.text_item)]


def open_stores(folder: str | Path, kind: str, what: str) -> list[FeatureStore]:
    """The finished store(s) at ``folder`` (a store, or a folder of ``part-*`` stores) of ``kind``."""
    from .parts import store_parts

    stores = [FeatureStore(p) for p in store_parts(Path(folder))]
    for s in stores:
        if s.kind != kind:
            raise UserError(f"{what} {s.folder}: a store of {s.kind} features; expected {kind} features")
    return stores


def store_tokens(stores: Sequence[FeatureStore], ids: Sequence[str], what: str, hint: str = "") -> Tokens:
    """Tokens of the rows with ``ids`` (in that order) over ``stores``; missing ids are refused
    with their count and the first few."""
    where: dict[str, tuple[int, int]] = {}
    for s, store in enumerate(stores):
        for r, i in enumerate(store.ids):
            where.setdefault(i, (s, r))
    missing = [i for i in ids if i not in where]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:3])
        raise UserError(f"{what} {stores[0].folder}: {len(missing)} of the {len(ids)} ids asked for are not in it "
                        f"(first: {shown}){hint}")
    parts, order = [], []
    for s, store in enumerate(stores):
        sel = [k for k, i in enumerate(ids) if where[i][0] == s]
        if sel:
            parts.append(store.tokens([where[ids[k]][1] for k in sel]))
            order += sel
    tokens = Tokens.cat(parts)
    if order != sorted(order):
        tokens = tokens[np.argsort(order).tolist()]
    return tokens


def split_tokens(split, visual: Sequence[FeatureStore], text: Sequence[FeatureStore]) -> tuple[Tokens, Tokens]:
    """The stored features of every item and caption of ``split``, in split order (an empty split,
    or one without captions, is refused naming it)."""
    if not len(split) or not split.texts:
        what = "no items" if not len(split) else "no captions"
        raise UserError(f"{split.name}: the split holds {what}; nothing to take from the stores (check --dataset, "
                        "--root and --split)")
    info = visual[0].tokens_info or {}
    if info.get("modality") in ("image", "video") and info["modality"] != split.modality:
        raise UserError(f"--visual-store {visual[0].folder}: features of {info['modality']}s, but {split.name} holds "
                        f"{split.modality}s")
    if visual[0].dim != text[0].dim:
        raise UserError(f"--visual-store {visual[0].folder} has D={visual[0].dim}, --text-store {text[0].folder} "
                        f"D={text[0].dim}: features of different models")
    vis = store_tokens(visual, split.item_ids, "--visual-store",
                       f"; a visual store's ids are the split's item ids ({split.item_ids[0]!r}, ...)")
    txt = store_tokens(text, caption_ids(split), "--text-store",
                       f"; a text store's ids are ITEM_ID#K, K the caption's index in the split "
                       f"({caption_ids(split)[0]!r}, ...), as tokenflow encode --captions writes")
    return vis, txt


def source_mismatch(a: FeatureStore, b: FeatureStore) -> str | None:
    """Why the features of stores ``a`` and ``b`` look like two different models' (else None):
    different backbone weights, or imported from differently named models."""
    sa, sb = store_source(a), store_source(b)
    if sa["kind"] == sb["kind"] == "encoded":
        ha, hb = (sa.get("backbone") or {}).get("sha256"), (sb.get("backbone") or {}).get("sha256")
        if ha and hb and ha != hb:
            return f"{a.folder} and {b.folder} were encoded by different weights (sha256 {ha[:12]}, {hb[:12]})"
    elif sa["kind"] == sb["kind"] == "imported" and sa.get("model") != sb.get("model"):
        return f"{a.folder} holds features of {sa.get('model')!r}, {b.folder} of {sb.get('model')!r}"
    return None


def plan_for_stores(aligner: str | None, hparams: dict, dim: int,
                    model: str | Path | None = None) -> tuple[object, str, dict, list[str]]:
    """``(aligner, plan name, head, notes)`` for stored features of size ``dim``: the plan of a
    trained ``model`` folder (its learned weights and fusion weights in ``head``) with the usual
    overrides, else ``aligner`` (default ``tokenflow``; ``"none"``: global only) with ``hparams``."""
    from ..align import aligner_for
    from ..models.retrieval import hparam_problems, load_for_scoring

    if model is not None:
        backbone, plan, name, head, notes = load_for_scoring(model, aligner, hparams)
        if backbone.embed_dim != dim:
            raise UserError(f"--model {model}: D={backbone.embed_dim}, the stores D={dim}")
        return plan, name, head, notes
    name = aligner or "tokenflow"
    if name == "none":
        return None, name, {}, []
    problems = hparam_problems(name, hparams)
    if problems:
        raise UserError("--hp: " + "; ".join(problems))
    plan = aligner_for(name, hparams, dim=dim)
    notes = [f"{name} has learned weights and no --model folder gives them: they are freshly initialised"] \
        if any(True for _ in plan.parameters()) else []
    return plan, name, {}, notes


def evaluate_stores(visual: str | Path, text: str | Path, split, aligner, **options) -> dict:
    """:func:`~tokenflow.eval.evaluate.evaluate` of ``split`` on the features of the ``visual``
    and ``text`` stores (see the module docstring for ids); ``options`` are evaluate's
    (``w_global``, ``w_fine``, ``chunk``, ``folds``, ``rerank_top``, ``test_norm``, ``device``, ...).
    The report's ``backbone`` says where each store's features came from."""
    from ..eval.evaluate import Encoded, evaluate

    t0 = time.perf_counter()
    vstores, tstores = open_stores(visual, "visual", "--visual-store"), open_stores(text, "text", "--text-store")
    vis, txt = split_tokens(split, vstores, tstores)
    info = vstores[0].tokens_info or {}
    described = {"stores": {"visual": [str(s.folder) for s in vstores], "text": [str(s.folder) for s in tstores]},
                 "visual": store_source(vstores[0]), "text": store_source(tstores[0])}
    options.setdefault("num_frames", info.get("frames", 12))
    options.setdefault("video_tokens", info.get("video_tokens", "frames"))
    return evaluate(described, split, aligner, encoded=Encoded(split, vis, txt, [], time.perf_counter() - t0),
                    **options)


def evaluate_command(args) -> int:
    """``tokenflow evaluate --visual-store V --text-store T --dataset ... --root ... --split ...``."""
    from ..eval.command import evaluation_split, fusion_weights, publish_report
    from ..eval.evaluate import format_table, protocol_folds

    if args.visual_store is None or args.text_store is None:
        raise UserError("tokenflow evaluate from stores needs both --visual-store and --text-store")
    bad = [f"--{k.replace('_', '-')}" for k in ("frame_cache", "max_words") if getattr(args, k) is not None]
    if bad or args.test_norm == "qbnorm":
        raise UserError(f"{(bad or ['--test-norm qbnorm'])[0]}: not available with stored features (no backbone "
                        "encodes anything)")
    split = evaluation_split(args)
    dim = open_stores(args.visual_store, "visual", "--visual-store")[0].dim
    aligner, name, head, notes = plan_for_stores(args.aligner, dict(args.hp or []), dim, args.model)
    for note in notes:
        print(f"tokenflow evaluate: note: {note}", file=sys.stderr)
    vstore, tstore = (open_stores(f, k, w)[0] for f, k, w in ((args.visual_store, "visual", "--visual-store"),
                                                              (args.text_store, "text", "--text-store")))
    mismatch = source_mismatch(vstore, tstore)
    if mismatch:
        print(f"tokenflow evaluate: warning: {mismatch}", file=sys.stderr)
    w_global, w_fine = fusion_weights(args, head)
    folds = args.folds if args.folds is not None else protocol_folds(args.dataset, args.split, len(split))
    norm = {} if args.test_norm is None else {"test_norm": args.test_norm,
                                              "test_norm_temperature": args.test_norm_temperature}
    report = evaluate_stores(args.visual_store, args.text_store, split, aligner, w_global=w_global, w_fine=w_fine,
                             chunk=args.chunk, folds=folds, rerank_top=args.rerank_top, device=args.device, **norm)
    report["dataset"] = {"name": args.dataset, "root": str(args.root), "split": args.split}
    headline = (f"{split.name}: {report['evaluated']['items']} {split.modality}s, {report['evaluated']['texts']} "
                f"texts from stores, aligner {name}")
    return publish_report(report, args, headline, format_table(report))


def _media_ids(media: Sequence[Path], stores: Sequence[FeatureStore], root: Path) -> list[str]:
    """The visual store id of each of ``media`` (see the module docstring for the rule)."""
    by_path: dict[str, str] = {}
    by_id: set[str] = set()
    for s in stores:
        for i, path in zip(s.ids, s.paths, strict=True):
            by_id.add(i)
            if path:
                by_path.setdefault(str((root / path).resolve()), i)
    out, missing = [], []
    for m in media:
        rel = m.relative_to(root).as_posix() if m.is_relative_to(root) else None
        hit = by_path.get(str(m.resolve())) or next((k for k in (rel, m.as_posix(), m.name, m.stem)
                                                      if k and k in by_id), None)
        if hit is None:
            missing.append(m)
        out.append(hit)
    if missing:
        raise UserError(f"--visual-store {stores[0].folder}: {len(missing)} of the {len(media)} images of the items "
                        f"are not in it (first: {missing[0]}); a row is an image when its path is the file, or its id "
                        "is the file's path relative to --images, its name or its name without the extension")
    twice = [i for i, n in Counter(out).items() if n > 1]
    if twice:
        shared = [str(m) for m, i in zip(media, out, strict=True) if i == twice[0]]
        raise UserError(f"--visual-store {stores[0].folder}: row {twice[0]!r} matches {len(shared)} different files "
                        f"({', '.join(shared[:2])}); give the rows their paths, or ids relative to --images")
    return out


def _caption_ids(texts: Sequence[str], stores: Sequence[FeatureStore]) -> list[str]:
    """The text store id of each caption of ``texts``, matched by its text."""
    by_text: dict[str, str] = {}
    for s in stores:
        for i, t in zip(s.ids, s.texts, strict=True):
            if t is not None:
                by_text.setdefault(t, i)
    if not by_text:
        raise UserError(f"--text-store {stores[0].folder}: holds no caption texts, and captions are matched by their "
                        "text; write it with texts (import-features: a 'texts' array; encode --texts)")
    missing = [t for t in texts if t not in by_text]
    if missing:
        raise UserError(f"--text-store {stores[0].folder}: {len(missing)} of the {len(texts)} captions of the items "
                        f"(true captions and negatives) are not in it (first: {missing[0]!r})")
    return [by_text[t] for t in texts]


def hard_negative_tokens(items: Sequence, visual: Sequence[FeatureStore], text: Sequence[FeatureStore],
                         root: str | Path):
    """The :class:`~tokenflow.eval.compositional.EncodedItems` of hard-negative ``items`` from
    stores: each distinct image (``root``: where relative paths start) and each distinct caption,
    negatives included, once (see the module docstring for the matching)."""
    from ..eval.compositional import EncodedItems

    t0 = time.perf_counter()
    media = list(dict.fromkeys(it.media for it in items))
    texts = list(dict.fromkeys(t for it in items for t in it.texts))
    vis = store_tokens(visual, _media_ids(media, visual, Path(root)), "--visual-store")
    txt = store_tokens(text, _caption_ids(texts, text), "--text-store")
    return EncodedItems(media, texts, vis, txt, time.perf_counter() - t0)


def compositional_stores(args, items: Sequence, root: Path) -> tuple:
    """``tokenflow evaluate-compositional --visual-store V --text-store T``: ``(encoded items,
    aligner, plan name, head, backbone description)`` for
    :func:`~tokenflow.eval.compositional.evaluate_compositional` (``encoded=``)."""
    from ..data.base import VIDEO_EXTENSIONS

    if args.visual_store is None or args.text_store is None:
        raise UserError("tokenflow evaluate-compositional from stores needs both --visual-store and --text-store")
    if args.max_words is not None:
        raise UserError("--max-words: not available with stored features (no backbone encodes anything)")
    vstores, tstores = open_stores(args.visual_store, "visual", "--visual-store"), open_stores(
        args.text_store, "text", "--text-store")
    kinds = {"video" if it.media.suffix.lower() in VIDEO_EXTENSIONS else "image" for it in items}
    held = (vstores[0].tokens_info or {}).get("modality")
    if held in ("image", "video") and kinds != {held}:
        raise UserError(f"--visual-store {vstores[0].folder}: features of {held}s, but the items hold "
                        f"{' and '.join(sorted(kinds))}s")
    if vstores[0].dim != tstores[0].dim:
        raise UserError(f"--visual-store {vstores[0].folder} has D={vstores[0].dim}, --text-store "
                        f"{tstores[0].folder} D={tstores[0].dim}: features of different models")
    aligner, name, head, notes = plan_for_stores(args.aligner, dict(args.hp or []), vstores[0].dim, args.model)
    for note in notes:
        print(f"tokenflow evaluate-compositional: note: {note}", file=sys.stderr)
    mismatch = source_mismatch(vstores[0], tstores[0])
    if mismatch:
        print(f"tokenflow evaluate-compositional: warning: {mismatch}", file=sys.stderr)
    encoded = hard_negative_tokens(items, vstores, tstores, root)
    described = {"stores": {"visual": [str(s.folder) for s in vstores], "text": [str(s.folder) for s in tstores]},
                 "visual": store_source(vstores[0]), "text": store_source(tstores[0])}
    return encoded, aligner, name, head, described


def add_store_options(p, *, explain: bool = False) -> None:
    """``--visual-store`` and ``--text-store`` (and explain's ``--item``, ``--text-id``)."""
    g = p.add_argument_group("stored features instead of a backbone (tokenflow encode or import-features)")
    g.add_argument("--visual-store", type=Path, default=None, help="store of the visual items' features")
    g.add_argument("--text-store", type=Path, default=None, help="store of the captions' features")
    if explain:
        g.add_argument("--item", default=None, help="the visual item's id in --visual-store")
        g.add_argument("--text-id", default=None, help="the caption's id in --text-store")


def explain_stored(args):
    """``tokenflow explain --visual-store V --text-store T --item ID --text-id ID``: the
    :class:`~tokenflow.viz.explain.Explanation` of stored features (no image)."""
    from ..viz.explain import explain_tokens

    need = [f"--{k.replace('_', '-')}" for k in ("visual_store", "text_store", "item", "text_id")
            if getattr(args, k) is None]
    if need:
        raise UserError(f"tokenflow explain from stores needs {', '.join(need)}")
    given = [f"--{k}" for k in ("media", "caption", "boxes") if getattr(args, k, None) is not None]
    if given:
        raise UserError(f"{given[0]}: not used with stored features (the item and caption are --item and --text-id; "
                        "pointing needs the image)")
    aligner, name, _, notes = plan_for_stores(args.aligner, dict(getattr(args, "hp", None) or []),
                                              open_stores(args.visual_store, "visual", "--visual-store")[0].dim,
                                              args.model)
    for note in notes:
        print(f"tokenflow explain: note: {note}", file=sys.stderr)
    if aligner is None:
        if args.model is None or args.aligner == "none":
            raise UserError("--aligner none: global only, there is no fine-grained plan to explain; pass --aligner "
                            "NAME (a plan)")
        raise UserError(f"--model {args.model}: has no fine-grained plan (global only); pass --aligner")
    tstores = open_stores(args.text_store, "text", "--text-store")
    vis = store_tokens(open_stores(args.visual_store, "visual", "--visual-store"), [args.item], "--item: the store")
    txt = store_tokens(tstores, [args.text_id], "--text-id: the store")
    caption = next(s.texts[s.ids.index(args.text_id)] for s in tstores if args.text_id in s.ids)
    try:
        return explain_tokens(vis, txt, caption, aligner, direction=args.direction)
    except ValueError as e:
        raise UserError(str(e)) from None


def query_store_search(args, dirs: Sequence[Path]):
    """``tokenflow search --index V --query-store T``: ``(searcher, plan name, labels, queries)``,
    the queries being the stored features of T's rows (``--query-id``: those rows only)."""
    from ..eval.command import fusion_weights
    from .searcher import Searcher

    given = [f"--{k}" for k in ("text", "queries", "image", "video") if getattr(args, k)]
    if given:
        raise UserError(f"{given[0]}: give either queries to encode or --query-store, not both")
    from .shortlist import _read_settings

    index_store = FeatureStore(dirs[0] / _read_settings(dirs[0])[0]["store"])
    kind = "text" if index_store.kind == "visual" else "visual"
    stores = open_stores(args.query_store, kind, "--query-store")
    mismatch = source_mismatch(index_store, stores[0])
    if mismatch and not args.no_check_backbone:
        raise UserError(f"--query-store: {mismatch}; pass --no-check-backbone to search anyway")
    ids = list(args.query_id) if args.query_id else [i for s in stores for i in s.ids]
    queries = store_tokens(stores, ids, "--query-store")
    texts = {i: t for s in stores if s.kind == "text" for i, t in zip(s.ids, s.texts, strict=True)}
    labels = [f"{i}: {texts[i]}" if texts.get(i) else i for i in ids]
    aligner, name, head, notes = plan_for_stores(args.aligner, dict(args.hp or []), index_store.dim, args.model)
    for note in notes:
        print(f"tokenflow search: note: {note}", file=sys.stderr)
    w_global, w_fine = fusion_weights(args, head)
    searcher = Searcher(list(dirs), aligner=aligner, w_global=w_global, w_fine=w_fine, device=args.device)
    return searcher, name, labels, queries
