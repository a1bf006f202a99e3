"""Where results are merged: candidates by index score, the top-k by exact score, and the final
hits (padding and min_score dropped, metadata joined, the filter's sort applied).

Every path (one host, or shard groups behind a Ray Serve router) selects in one total order:
higher score first, equal scores by shard position in the manifest, then by row. In a total order
the best m of a union are the best m of the union of each part's best m, so shard groups can
each answer for their own shards and a router merge their answers into exactly what one pass
over every shard returns, ties included (DESIGN §9). Duplicate photos share a stored vector, so
equal scores are common, and faiss's argpartition alone would break them arbitrarily."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np

from .filters import SearchFilter, order_hits

if TYPE_CHECKING:
    from .searcher import Hit


class Scored(NamedTuple):
    """Candidates of n queries, (n, m) arrays, unordered: index scores (PQ estimates for IVF-PQ,
    exact for Flat), exact scores on the stored vectors, shard positions, rows. Padding has
    estimate -inf and row -1."""

    estimate: np.ndarray
    exact: np.ndarray
    owners: np.ndarray
    rows: np.ndarray


class Ranked(NamedTuple):
    """Each query's best rows by exact score, best first: (n, <= k) scores, shard positions, rows."""

    scores: np.ndarray
    owners: np.ndarray
    rows: np.ndarray


# (scores, owners, rows, ranks) of kept rows -> their hits, metadata joined
HitsFor = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], "list[Hit]"]


def ranked_order(keys: np.ndarray, owners: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """Column positions of each row's `count` best entries in the total order, best first."""
    return np.lexsort((rows, owners, -keys), axis=-1)[..., :count]


def best(keys: np.ndarray, owners: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """Column positions of each row's `count` best entries in the total order, unordered. Linear
    time (argpartition); only rows whose ties straddle the cut are sorted."""
    n, m = keys.shape
    if m <= count:
        return np.broadcast_to(np.arange(m), (n, m))
    part = np.argpartition(-keys, count - 1, axis=1)[:, :count]
    cut = np.take_along_axis(keys, part, axis=1).min(axis=1, keepdims=True)
    # argpartition took every entry above the cut and some of those equal to it: the set is
    # the order's own unless some entries equal to the cut were left out.
    ambiguous = ((keys > cut).sum(axis=1) + (keys == cut).sum(axis=1)) > count
    if ambiguous.any():
        part[ambiguous] = ranked_order(keys[ambiguous], owners[ambiguous], rows[ambiguous], count)
    return part


def _take(at: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.take_along_axis(a, at, axis=1) for a in arrays)


def keep_best(scored: Scored, depth: int) -> Scored:
    """Each query's `depth` best candidates by index score."""
    if scored.estimate.shape[1] <= depth:
        return scored
    return Scored(*_take(best(scored.estimate, scored.owners, scored.rows, depth), *scored))


def top_exact(scored: Scored | Ranked, k: int) -> Ranked:
    """Each query's k best candidates by exact score, best first."""
    scores = scored.exact if isinstance(scored, Scored) else scored.scores
    at = ranked_order(scores, scored.owners, scored.rows, k)
    return Ranked(*_take(at, scores, scored.owners, scored.rows))


def merge_candidates(parts: Sequence[Scored], depth: int, k: int) -> Ranked:
    """The k best by exact score among the `depth` best by index score over all parts: one
    host's answer whether the parts are all shards at once or each group's own best `depth`.
    A part may hold more than `depth` (the GPU's exact float16 path adds a margin for its
    rounding): then that many are kept, so one part is re-ranked whole."""
    joined = Scored(*(np.concatenate(arrays, axis=1) for arrays in zip(*parts)))
    return top_exact(keep_best(joined, max([depth] + [p.rows.shape[1] for p in parts])), k)


def merge_ranked(parts: Sequence[Ranked], k: int) -> Ranked:
    """The k best by exact score over parts that are each their shards' own top-k (filtered
    searches, where every shard's candidates are re-ranked exactly)."""
    return top_exact(Ranked(*(np.concatenate(arrays, axis=1) for arrays in zip(*parts))), k)


def empty_scored(n: int) -> Scored:
    return Scored(np.full((n, 0), -np.inf, np.float32), np.full((n, 0), -np.inf, np.float32),
                  np.zeros((n, 0), np.int64), np.full((n, 0), -1, np.int64))


def finish(ranked: Ranked, flt: SearchFilter, hits_for: HitsFor) -> "list[list[Hit]]":
    """Per query: drop padding, unusable scores (a damaged vector) and scores under min_score,
    join metadata through `hits_for`, apply the filter's sort."""
    scores, owners, rows = ranked
    keep = (rows >= 0) & np.isfinite(scores)
    if flt.min_score is not None:
        keep &= scores >= flt.min_score
    flat_hits = hits_for(scores[keep], owners[keep], rows[keep], np.cumsum(keep, axis=1)[keep])
    out, at = [], 0
    for count in keep.sum(axis=1):
        hits = flat_hits[at:at + count]
        at += count
        if flt.sort != "score" and hits:
            order = order_hits(np.array([h.score for h in hits]), np.array([h.taken for h in hits]), flt.sort)
            hits = [replace(hits[j], rank=rank) for rank, j in enumerate(order, start=1)]
        out.append(hits)
    return out
