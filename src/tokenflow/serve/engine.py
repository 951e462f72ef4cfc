"""What the web page asks of a collection, without HTTP: search with one or two plans, explain a result.

:class:`Engine` holds one :class:`~tokenflow.index.Searcher` over the index (global ranking) and
re-ranks with any allowed plan: a plan's searcher shares the loaded index and stores. Requests
are checked against :class:`Limits` before any work; a bad one raises
:class:`~tokenflow.serve.media.RequestError` with its HTTP status.

Explanations are ``Aligner.plan`` of the pair the search ranked: the stored tokens of the item
(exactly what the re-ranking scored) and the encoded query, in the search's direction (``t2v`` for
text queries over images or videos, ``v2t`` for an image query over texts). The numbers are those
of ``tokenflow explain --json`` (:mod:`tokenflow.serve.explain`): patch weights ``d`` over the patch
grid and word weights ``e`` (the plan's own token weights where it has them, else each token's
share of the fine score; ``weights_label`` says which), and the strongest word-patch contributions
``T_hat x c`` (``T_hat = 100 T``). A stored text's words are its text tokenized again. A video stored with
every frame's patches is explained on its middle frame's patches; a video stored with one token
per frame has no patch tokens in the store, so its middle frame is encoded again
(:func:`tokenflow.viz.explain`, the same numbers as ``tokenflow explain``).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..align import Aligner, check_hparams, list_aligners
from ..index import Searcher
from ..models.base import DualEncoder
from ..errors import InputError, UserError
from ..models.scoring import GLOBAL_ONLY, TrainedPlan, build_plan
from ..tokens import Tokens
from .explain import TOP_PAIRS, explanation, stored_words
from .media import MediaRoot, RequestError, middle_frame_index

__all__ = ["DEFAULT_PLANS", "GLOBAL", "Engine", "Limits"]

GLOBAL = "global"  # rank by the global similarity alone (no plan)
#: Plans the page offers unless told otherwise, after a trained model's own plan: token plans without
#: learned weights.
DEFAULT_PLANS = ("tokenflow", "max-avg", "scan", "sinkhorn", "uniform")
TRAINED, FRESH = "trained", "fresh"  # a plan as the folder trained it (its learned weights), or built anew


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask (the server's safety defaults)."""

    max_query_chars: int = 500
    max_k: int = 50
    max_plans: int = 2
    max_upload_bytes: int = 4 * 2**20
    max_image_pixels: int = 20_000_000
    max_hparam: float = 10_000.0  # |value| of any numeric hyperparameter (n_iter=1e9 would stall the server)
    shortlist: int = 100  # items re-ranked per query
    workers: int = 2  # queries computed at once; the others wait


@dataclass(frozen=True)
class Query:
    """A checked query: a text (visual collections) or a decoded image (text collections)."""

    text: str | None = None
    image: object | None = None


class Engine:
    """Search and explanations over one index (see the module docstring).

    Args:
        index_dirs: index folder(s) of one collection, as :class:`~tokenflow.index.Searcher` takes.
        model: the backbone that encoded the collection (encodes the queries).
        plans: the plan names a request may use (``"global"`` is always allowed); None: the
            trained plan first, then :data:`DEFAULT_PLANS`.
        trained: what the model folder was trained with (:class:`~tokenflow.models.scoring.TrainedPlan`):
            its plan is served with its learned weights and hyperparameters (the one scoring path,
            :func:`~tokenflow.models.scoring.build_plan`); every other plan is built fresh.
        w_global, w_fine: default weights of the fused score (None: the trained folder's, else 1;
            a request may set its own).
        media_root: folder every media file must lie in (default: see :class:`MediaRoot`).
    """

    def __init__(self, index_dirs: str | Path | Sequence[str | Path], model: DualEncoder, *,
                 plans: Sequence[str] | None = None, trained: TrainedPlan | None = None,
                 w_global: float | None = None, w_fine: float | None = None, limits: Limits = Limits(),
                 media_root: str | Path | None = None, device: str = "cpu", check_backbone: bool = True):
        self.trained, self.device = trained, device
        self.trained_name = None if trained is None else (GLOBAL if trained.name == GLOBAL_ONLY else trained.name)
        self._aligners: OrderedDict[tuple, tuple[Aligner, str]] = OrderedDict()  # (aligner, source)
        self._lock = threading.Lock()
        if self.trained_name not in (None, GLOBAL):  # a folder whose plan cannot be built fails here, at start-up
            self._build(self.trained_name, {}, dim=model.embed_dim)
        if plans is None:
            plans = [*([self.trained_name] if self.trained_name else []), *DEFAULT_PLANS]
        w_global = (1.0 if trained is None else trained.w_global) if w_global is None else w_global
        w_fine = (1.0 if trained is None else trained.w_fine) if w_fine is None else w_fine
        unknown = sorted(set(plans) - set(list_aligners()) - {GLOBAL})
        if unknown:
            raise InputError(f"unknown plans {unknown}; valid: {', '.join([GLOBAL, *list_aligners()])}")
        self.model = model.eval()
        self.base = Searcher(index_dirs, model=self.model, aligner=None, w_global=w_global, w_fine=w_fine,
                             device=device, check_backbone=check_backbone)
        self.model = self.model.to(device)  # queries are encoded where they are re-ranked (checked on the CPU first)
        self.kind, self.limits = self.base.kind, limits
        self.plans = list(dict.fromkeys([*plans, GLOBAL]))
        self.w_global, self.w_fine = float(w_global), float(w_fine)
        self.items: dict[str, tuple[int, int]] = {}
        for s, store in enumerate(self.base.stores):
            for r, item_id in enumerate(store.ids):
                self.items.setdefault(item_id, (s, r))  # an id repeated across shards: the first
        # A text store keeps its texts where a visual one keeps file paths: no media to serve then.
        self.media = MediaRoot([p for store in self.base.stores for p in store.paths] if self.kind == "visual" else [],
                               media_root)
        self._busy = threading.BoundedSemaphore(max(1, limits.workers))

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Hold one of the ``limits.workers`` slots that bound the heavy work (encoding, scoring,
        decoding thumbnails) running at once; the other requests wait for a slot."""
        with self._busy:
            yield

    # -- checking requests --------------------------------------------------------------------
    def info(self) -> dict:
        """What the page needs to draw its form."""
        store = self.base.stores[0]
        return {"kind": self.kind, "count": len(self.base), "plans": self.plans, "default_plans": self.plans[:2],
                "plan_source": {p: TRAINED if p == self.trained_name else FRESH for p in self.plans},
                "trained_plan": self.trained_name,
                "backbone": store.backbone.get("name"), "w_global": self.w_global, "w_fine": self.w_fine,
                "query": "text" if self.kind == "visual" else "image",
                "limits": {"max_query_chars": self.limits.max_query_chars, "max_k": self.limits.max_k,
                           "max_plans": self.limits.max_plans, "max_upload_bytes": self.limits.max_upload_bytes}}

    def check_text(self, text: object) -> Query:
        """A text query for a visual collection, or :class:`RequestError`."""
        if self.kind != "visual":
            raise RequestError("this is a collection of texts: the query is an uploaded image", 400)
        if not isinstance(text, str) or not text.strip():
            raise RequestError("query: give a non-empty text", 400)
        if len(text) > self.limits.max_query_chars:
            raise RequestError(f"query of {len(text)} characters: at most {self.limits.max_query_chars}", 400)
        return Query(text=text.strip())

    def check_image(self, image: object) -> Query:
        """An (already decoded) image query for a text collection, or :class:`RequestError`."""
        if self.kind != "text":
            raise RequestError("this is a collection of images or videos: the query is a text", 400)
        return Query(image=image)

    def check_k(self, k: object) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.limits.max_k:
            raise RequestError(f"k must be an integer from 1 to {self.limits.max_k}, got {k!r}", 400)
        return k

    def check_weight(self, name: str, value: object, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or abs(value) > 100:
            raise RequestError(f"{name} must be a finite number from -100 to 100, got {value!r}", 400)
        return float(value)

    def aligner(self, name: object, hparams: object = None) -> Aligner | None:
        """The aligner of an allowed plan with checked hyperparameters (built once, then reused);
        None for ``"global"``. The trained plan keeps its learned weights (see :meth:`plan`)."""
        return self.plan(name, hparams)[0]

    def plan(self, name: object, hparams: object = None) -> tuple[Aligner | None, str]:
        """``(aligner, source)``: the aligner as :meth:`aligner` gives it, and ``"trained"`` when it is
        the folder's trained plan with its learned weights (``"fresh"`` otherwise)."""
        if not isinstance(name, str) or name not in self.plans:
            raise RequestError(f"unknown plan {name!r}; this server offers: {', '.join(self.plans)}", 400)
        hparams = {} if hparams is None else hparams
        if not isinstance(hparams, dict):
            raise RequestError(f"hparams of {name} must be an object of NAME: value, got {hparams!r}", 400)
        if name == GLOBAL:
            if hparams:
                raise RequestError(f"the global ranking takes no hyperparameters, got {sorted(hparams)}", 400)
            return None, TRAINED if name == self.trained_name else FRESH
        self._check_hparams(name, hparams)
        key = (name, tuple(sorted(hparams.items())))
        with self._lock:
            if key in self._aligners:
                self._aligners.move_to_end(key)
                return self._aligners[key]
        try:
            return self._build(name, hparams, dim=self.base.dim)
        except UserError as e:  # hyperparameters that do not fit together (heads vs D); a bug is no 400
            raise RequestError(str(e), 400) from None

    def _build(self, name: str, hparams: dict, *, dim: int) -> tuple[Aligner, str]:
        """Build a plan other than ``"global"`` and keep it for :meth:`plan`: the one scoring path,
        the trained plan with its learned weights, any other built fresh."""
        built, _, trained, _, _ = build_plan(self.trained, name, hparams, dim=dim)
        entry = (built.to(self.device).eval(), TRAINED if trained else FRESH)
        key = (name, tuple(sorted(hparams.items())))
        with self._lock:
            self._aligners[key] = entry
            while len(self._aligners) > 32:
                self._aligners.popitem(last=False)
        return entry

    def _check_hparams(self, name: str, hparams: dict) -> None:
        """The plan's declared spec (:func:`~tokenflow.align.check_hparams`), then this server's own
        limits: numbers within +-max_hparam (n_iter=1e9 would stall it), only short strings."""
        try:
            check_hparams(name, hparams, source="hparams")
        except UserError as e:
            raise RequestError(str(e), 400) from None
        for key, value in hparams.items():
            if not isinstance(value, (bool, int, float, str, type(None))) or (isinstance(value, str)
                                                                               and len(value) > 40):
                raise RequestError(f"{name}: {key} must be a number, a boolean, null or a short name, "
                                   f"got {value!r}", 400)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > self.limits.max_hparam:
                raise RequestError(f"{name}: {key}={value!r} is beyond what this server accepts "
                                   f"(|value| <= {self.limits.max_hparam:g})", 400)

    # -- work -----------------------------------------------------------------------------------
    def encode(self, query: Query) -> tuple[Tokens, list[str] | None]:
        """The query's tokens [1] on the CPU, and its words (text queries)."""
        with torch.no_grad():
            if query.text is not None:
                ids, mask = self.model.tokenize([query.text])
                dev = self.model.device
                tok = self.model.encode_texts(ids.to(dev), mask.to(dev))
                words = self.model.decode_tokens(ids[0][mask[0].bool()].tolist())
                return tok.to("cpu", torch.float32), words
            pixels = self.model.preprocess(query.image).unsqueeze(0).to(self.model.device)
            return self.model.encode_images(pixels).to("cpu", torch.float32), None

    def search(self, query: Query, k: int, plans: Sequence[tuple[str, dict]], w_global: float | None = None,
               w_fine: float | None = None) -> dict:
        """The top ``k`` of each plan: ``{"plans": [{"plan", "hparams", "results": [...]}, ...]}``."""
        if not plans or len(plans) > self.limits.max_plans:
            raise RequestError(f"give 1 to {self.limits.max_plans} plans, got {len(plans)}", 400)
        wg = self.check_weight("w_global", w_global, self.w_global)
        wf = self.check_weight("w_fine", w_fine, self.w_fine)
        built = [self.plan(name, hp) for name, hp in plans]
        with self._busy:
            tokens, _ = self.encode(query)
            out = []
            for (name, hp), (aligner, source) in zip(plans, built):
                searcher = self._searcher(aligner, wg, wf)
                res = searcher.search(tokens, k=k, shortlist=self.limits.shortlist)[0]
                out.append({"plan": name, "plan_source": source, "hparams": hp, "w_global": wg,
                            "w_fine": wf if aligner else 0.0, "results": self._results(res)})
        return {"kind": self.kind, "k": k, "plans": out}

    def _searcher(self, aligner: Aligner | None, w_global: float, w_fine: float) -> Searcher:
        """A searcher sharing the base one's loaded index and stores, with another plan and weights."""
        return self.base.with_plan(aligner, w_global=w_global, w_fine=w_fine)

    def _results(self, res) -> list[dict]:
        out = []
        for rank, item_id in enumerate(res.ids):
            store = self.base.stores[res.stores[rank]]
            has_media = self.kind == "visual" and bool(store.paths[res.rows[rank]])
            out.append({"rank": rank + 1, "id": item_id, "score": float(res.scores[rank]),
                        "global": float(res.global_scores[rank]),
                        "fine": None if res.fine_scores is None else float(res.fine_scores[rank]),
                        "media": f"/media/{_quote(item_id)}" if has_media else None,
                        "text": store.paths[res.rows[rank]] if self.kind == "text" else None})
        return out

    def locate(self, item: object) -> tuple[int, int]:
        """(store, row) of an item id, or :class:`RequestError` 404."""
        if not isinstance(item, str) or item not in self.items:
            raise RequestError(f"no item {str(item)[:80]!r} in this collection", 404)
        return self.items[item]

    def media_path(self, item: object) -> Path:
        """The checked file of an item (see :meth:`MediaRoot.resolve`)."""
        s, r = self.locate(item)
        if self.kind != "visual":
            raise RequestError("a collection of texts has no media to show", 404)
        return self.media.resolve(self.base.stores[s].paths[r])

    def explain(self, query: Query, item: object, plan: object, hparams: object = None) -> dict:
        """Why ``item`` matched ``query`` under ``plan`` (see the module docstring)."""
        aligner = self.aligner(plan, hparams)
        if aligner is None:
            raise RequestError("the global ranking has no token plan to explain: choose a plan", 400)
        if not aligner.token_plan:
            raise RequestError(f"{plan} does not weigh token pairs: there is no patch-word plan to draw", 400)
        s, r = self.locate(item)
        with self._busy:
            q, words = self.encode(query)
            stored = self.base.stores[s].tokens([r])
            if self.kind == "visual":
                expl = self._explain_visual_item(aligner, stored, q, words, query.text, item)
            else:  # a stored text: its words from its text, which the store keeps
                text = self.base.stores[s].paths[r]
                words, note = stored_words(self.model, text, int(stored.mask[0].sum()))
                expl = explanation(aligner, q, stored, tokens=words, caption=text or "",
                                   grid=tuple(self.model.patch_grid), direction="v2t", device=self.device,
                                   tokens_note=note)
                expl["source"] = "store"
        return {"item": item, "plan": plan, "hparams": hparams or {}, **expl}

    def _explain_visual_item(self, aligner: Aligner, stored: Tokens, q: Tokens, words: list[str], text: str,
                             item: str) -> dict:
        grid = self.model.patch_grid
        p, n = grid[0] * grid[1], int(stored.mask[0].sum())
        info = self.base.stores[0].tokens_info or {}  # what the rows are; older stores: guessed from n
        kind = {"image": "patches", "video": info.get("video_tokens")}.get(info.get("modality"))
        if kind is None:
            kind = "patches" if n == p else "video-patches" if n % p == 0 else "frames"
        elif kind == "patches" and info.get("modality") == "video":
            kind = "video-patches"
        if kind == "patches" and n == p:
            vis, frame = stored, None
        elif kind == "video-patches" and n % p == 0:  # every frame's patches: its middle frame
            mid = middle_frame_index(n // p)
            real = stored.feats[0][stored.mask[0]]
            vis = Tokens(real[mid * p : (mid + 1) * p].unsqueeze(0), torch.ones(1, p, dtype=torch.bool),
                         stored.pooled)
            frame = mid
        else:  # one token per frame: encode the middle frame's patches again, as tokenflow explain does
            return self._explain_from_media(aligner, text, item)
        expl = explanation(aligner, vis, q, tokens=words, caption=text, grid=tuple(grid), direction="t2v",
                           device=self.device)
        return {**expl, "source": "store", "frame": frame}

    def _explain_from_media(self, aligner: Aligner, text: str, item: str) -> dict:
        from ..models.retrieval import RetrievalModel
        from ..viz import explain

        path = self.media_path(item)
        expl = explain(RetrievalModel(self.model, aligner), path, text, aligner=aligner, direction="t2v")
        return {**expl.to_dict(TOP_PAIRS), "tokens_note": None, "source": "media", "frame": None}


def _quote(item_id: str) -> str:
    from urllib.parse import quote

    return quote(item_id, safe="")
