"""Two-stage search over one or several indexed feature stores.

Stage 1: FAISS returns the ``shortlist`` items of highest global similarity
``mu_bar . omega_bar`` (over several stores: each store's shortlist, merged, then the best
``shortlist`` of them: with exact (flat) indexes, several stores give exactly what one index
over all would; approximate ones may differ as any approximate search does).
Stage 2: any aligner re-scores the shortlist; the ranking score is, as in
:func:`tokenflow.eval.evaluate.similarity`, ``w_global * global + w_fine * s_dir`` with the
direction of the query: text queries over a visual store use ``s_t2v`` (a column of the
[visual, text] matrix), visual queries over a text store use ``s_v2t`` (a row). The global term
is recomputed from the stored float32 global features, so quantised index vectors change which
items are shortlisted, never their scores.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..align import Aligner
from ..errors import UserError
from ..models.base import DualEncoder
from ..models.scoring import Scoring
from ..tokens import Tokens
from .shortlist import load_index

__all__ = ["SearchResult", "Searcher"]


@dataclass(frozen=True)
class SearchResult:
    """The results of one query, best first (at most k; all items when k exceeds the collection).

    ``scores`` [k] = ``w_global * global_scores + w_fine * fine_scores``; ``fine_scores`` is
    None without an aligner. ``stores[r]``, ``rows[r]``: where result r lives."""

    ids: list[str]
    scores: Tensor
    global_scores: Tensor
    fine_scores: Tensor | None
    stores: list[int]
    rows: list[int]


class Searcher:
    """Load index folders (built by :class:`~tokenflow.index.Indexer`) and search them.

    Args:
        index_dirs: one index folder or a list (shards of one collection, same backbone).
        model: encodes text queries given as strings (``model.encode_text_strings``); checked
            against the stores' backbone (dim, and weights hash unless ``check_backbone=False``).
        aligner: re-ranks the shortlist; None ranks by the global similarity alone.
        w_global, w_fine: weights of the fused score.
        device: where the re-ranking runs.
    """

    def __init__(self, index_dirs: str | Path | Sequence[str | Path], model: DualEncoder | None = None,
                 aligner: Aligner | None = None, *, w_global: float = 1.0, w_fine: float = 1.0,
                 device: str | torch.device = "cpu", chunk: int | None = None, check_backbone: bool = True):
        dirs = [index_dirs] if isinstance(index_dirs, (str, Path)) else list(index_dirs)
        if not dirs:
            raise UserError("Searcher needs at least one index folder")
        loaded = [load_index(d) for d in dirs]
        self.indexes = [x[0] for x in loaded]
        self.infos = [x[1] for x in loaded]
        self.stores = [x[2] for x in loaded]
        first = self.stores[0]
        for s in self.stores[1:]:
            if (s.dim, s.kind, s.backbone.get("sha256")) != (first.dim, first.kind, first.backbone.get("sha256")):
                raise UserError(f"stores {first.folder} ({first.kind}, D={first.dim}, backbone "
                                f"{first.backbone.get('name')} {first.backbone.get('sha256')}) and {s.folder} "
                                f"({s.kind}, D={s.dim}, backbone {s.backbone.get('name')} "
                                f"{s.backbone.get('sha256')}) cannot be searched together")
        self.dim, self.kind = first.dim, first.kind
        self.model, self.w_global, self.w_fine, self.device, self.chunk = model, w_global, w_fine, device, chunk
        self.aligner = None if aligner is None else aligner.to(device).eval()
        if model is not None:
            self._check_model(model, check_backbone)

    @classmethod
    def from_scoring(cls, index_dirs: str | Path | Sequence[str | Path], scoring: Scoring, **options) -> Searcher:
        """A searcher that scores with ``scoring`` (:func:`tokenflow.models.scoring.load_scoring`):
        its backbone encodes the queries, its plan and fusion weights rank; ``options`` are the
        constructor's (``device``, ``chunk``, ``check_backbone``)."""
        return cls(index_dirs, model=scoring.backbone, aligner=scoring.aligner, w_global=scoring.w_global,
                   w_fine=scoring.w_fine, **options)

    @classmethod
    def from_model(cls, index_dirs: str | Path | Sequence[str | Path], folder: str | Path, aligner: str | None = None,
                   hparams: dict | None = None, *, w_global: float | None = None, w_fine: float | None = None,
                   **options) -> Searcher:
        """A searcher over a trained (or bare backbone) ``folder``, through the one scoring path: its
        trained plan with its learned weights and fusion weights unless overridden (see
        :func:`~tokenflow.models.scoring.load_scoring`); ``options`` as :meth:`from_scoring`."""
        from ..models.scoring import load_scoring

        scoring = load_scoring(folder, aligner, hparams, w_global=w_global, w_fine=w_fine)
        return cls.from_scoring(index_dirs, scoring, **options)

    def with_plan(self, aligner: Aligner | None, *, w_global: float | None = None,
                  w_fine: float | None = None) -> Searcher:
        """A searcher over the same loaded indexes and stores with another plan (and weights);
        this one is left as it is."""
        other = copy.copy(self)
        other.aligner = None if aligner is None else aligner.to(self.device).eval()
        other.w_global = self.w_global if w_global is None else w_global
        other.w_fine = self.w_fine if w_fine is None else w_fine
        return other

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores)

    def _check_model(self, model: DualEncoder, check_backbone: bool) -> None:
        store = self.stores[0]
        if model.embed_dim != self.dim:
            raise UserError(f"the query model {type(model).__name__} has D={model.embed_dim} but the store "
                            f"{store.folder} (backbone {store.backbone.get('name')}) has D={self.dim}")
        if check_backbone and "sha256" in store.backbone:
            from .encode import backbone_fingerprint

            mine = backbone_fingerprint(model)["sha256"]
            if mine != store.backbone["sha256"]:
                raise UserError(f"the query model {type(model).__name__} (weights sha256 {mine[:12]}) is not the "
                                f"backbone that encoded {store.folder} ({store.backbone.get('name')}, sha256 "
                                f"{store.backbone['sha256'][:12]}); pass check_backbone=False to search anyway")

    def _queries(self, queries: Tokens | Sequence[str] | str) -> Tokens:
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, Tokens):
            if self.model is None:
                raise UserError("text queries given as strings need a model to encode them: Searcher(..., model=...)")
            if self.kind != "visual":
                raise UserError(f"text queries cannot search a store of texts ({self.stores[0].folder})")
            if not len(queries):
                raise UserError("empty query batch: nothing to search")
            with torch.no_grad():
                queries = self.model.encode_text_strings(list(queries)).to("cpu")
        if len(queries) == 0:
            raise UserError("empty query batch: nothing to search")
        if queries.dim != self.dim:
            raise UserError(f"queries have D={queries.dim} but the store {self.stores[0].folder} "
                            f"(backbone {self.stores[0].backbone.get('name')}) has D={self.dim}")
        return queries.detach().to("cpu", torch.float32)

    def search(self, queries: Tokens | Sequence[str] | str, k: int = 10, shortlist: int = 100) -> list[SearchResult]:
        """The top ``k`` items for each query (texts for a visual store, visual items for a text store).

        ``shortlist``: items re-ranked per query (at least ``k``); a shortlist of the whole
        collection makes the search exhaustive. ``k`` larger than the collection returns every
        item. An empty query batch raises :class:`UserError`.
        """
        if k < 1 or shortlist < 1:
            raise ValueError(f"k and shortlist must be at least 1, got k={k}, shortlist={shortlist}")
        q = self._queries(queries)
        depth = min(k if self.aligner is None or self.w_fine == 0 else max(k, shortlist), len(self))
        cand = self._shortlist(q.pooled.numpy(), depth)
        return [self._rerank(q[i], *cand[i], k) for i in range(len(q))]

    def _shortlist(self, pooled: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query: (global scores, store numbers, rows) of the ``depth`` best, merged over stores."""
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        parts = []
        for s, index in enumerate(self.indexes):
            scores, rows = index.search(pooled, min(depth, index.ntotal))
            parts.append((scores, np.full_like(rows, s), rows))
        scores, stores, rows = (np.concatenate([p[j] for p in parts], axis=1) for j in range(3))
        out = []
        for i in range(len(pooled)):
            ok = rows[i] >= 0  # FAISS pads with -1 when an approximate index finds fewer
            order = np.argsort(-scores[i][ok], kind="stable")[:depth]
            out.append((scores[i][ok][order], stores[i][ok][order], rows[i][ok][order]))
        return out

    def _rerank(self, query: Tokens, g: np.ndarray, stores: np.ndarray, rows: np.ndarray, k: int) -> SearchResult:
        """Score the shortlist exactly: the global term from the stored float32 global features
        (FAISS's own scores are approximate with fp16/sq8 vectors), plus the plan's."""
        if len(rows) == 0:  # an approximate index found nothing in the lists it probed
            none = torch.zeros(0)
            return SearchResult([], none, none, None if self.aligner is None else none, [], [])
        uniq = np.unique(stores)
        perm = torch.from_numpy(np.concatenate([np.nonzero(stores == s)[0] for s in uniq]))
        fine = None
        if self.aligner is not None and self.w_fine != 0:
            cands = Tokens.cat([self.stores[s].tokens(rows[stores == s]) for s in uniq])
            pooled = cands.pooled
            fine = torch.empty(len(rows))
            fine[perm] = self._fine(query, cands)
        else:
            pooled = torch.from_numpy(np.concatenate([self.stores[s].global_rows(rows[stores == s]) for s in uniq]))
        glob = torch.empty(len(rows))
        glob[perm] = pooled.float() @ query.pooled.float().reshape(-1)
        score = self.w_global * glob if fine is None else self.w_global * glob + self.w_fine * fine
        top = torch.argsort(score, descending=True, stable=True)[:k]
        ids = [self.stores[int(stores[t])].ids[int(rows[t])] for t in top.tolist()]
        return SearchResult(ids, score[top], glob[top], None if fine is None else fine[top],
                            [int(stores[t]) for t in top.tolist()], [int(rows[t]) for t in top.tolist()])

    @torch.no_grad()
    def _fine(self, query: Tokens, cands: Tokens) -> Tensor:
        """[n] fine-grained scores of one query against its candidates, in the query's direction."""
        query, cands = query.to(self.device), cands.to(self.device)
        if self.kind == "visual":  # text query: a column of s_t2v [visual, text]
            return self.aligner.pairwise(cands, query, chunk=self.chunk).t2v[:, 0].float().cpu()
        return self.aligner.pairwise(query, cands, chunk=self.chunk).v2t[0].float().cpu()
