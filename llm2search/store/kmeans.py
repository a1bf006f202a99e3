"""Spherical k-means for the IVF coarse quantizer, with the training sample streamed from a file
on every iteration. faiss's Clustering wants the whole sample in RAM as float32: 64 points per
list at 8,192 lists (5M vectors) is 2.7 GB, more than a retrain may hold (DESIGN §7). This is
the same algorithm faiss runs for an inner-product IVF (Lloyd iterations, assignment by
maximum inner product, centroids renormalised, empty clusters split off large ones), and it
holds only the centroids and one chunk of points."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

NITER = 10  # faiss's default for IVF coarse quantizers (ClusteringParameters of IndexIVF)
SPLIT_EPS = 1.0 / 1024  # how far apart a split cluster's two centroids start (faiss's EPS)
REDUCE_ROWS = 256  # rows of a chunk sorted by cluster and summed per step


def spherical_kmeans(chunks: Callable[[], Iterable[np.ndarray]], init: np.ndarray, niter: int = NITER,
                     seed: int = 1234) -> np.ndarray:
    """Unit-norm centroids, float32 (k, d). `chunks()` yields the sample's rows (any float
    dtype) and is called once per iteration; `init` holds the k starting points."""
    import faiss

    rng = np.random.default_rng(seed)
    centroids = _unit(np.array(init, dtype=np.float32))
    k, d = centroids.shape
    for _ in range(niter):
        sums = np.zeros((k, d), dtype=np.float32)
        counts = np.zeros(k, dtype=np.int64)
        for chunk in chunks():
            x = np.ascontiguousarray(chunk, dtype=np.float32)
            # nearest centroid by inner product, on the array itself (an IndexFlatIP would copy it)
            labels = faiss.knn(x, centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0]
            counts += np.bincount(labels, minlength=k)
            for start in range(0, len(x), REDUCE_ROWS):  # sorted copies of a slice, not of the chunk
                part = labels[start:start + REDUCE_ROWS]
                order = np.argsort(part, kind="stable")
                sorted_labels = part[order]
                starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
                sums[sorted_labels[starts]] += np.add.reduceat(x[start:start + REDUCE_ROWS][order], starts, axis=0)
        filled = counts > 0  # in place: no (k, d) temporaries beside the centroids and sums
        np.divide(sums, np.maximum(counts, 1)[:, None].astype(np.float32), out=centroids, where=filled[:, None])
        _split_empty(centroids, counts, rng)
        _unit_in_place(centroids)
    return centroids


def _split_empty(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Give each empty cluster half of a large one (picked with probability by size), the two
    centroids nudged apart, as faiss's k-means does."""
    d = centroids.shape[1]
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for empty in np.flatnonzero(counts == 0):
        weights = np.maximum(counts - 1, 0).astype(np.float64)
        if weights.sum() == 0:
            return
        donor = int(rng.choice(len(counts), p=weights / weights.sum()))
        centroids[empty] = centroids[donor] * (1 + SPLIT_EPS * sign)
        centroids[donor] = centroids[donor] * (1 - SPLIT_EPS * sign)
        counts[empty] = counts[donor] // 2
        counts[donor] -= counts[empty]


def _unit_in_place(x: np.ndarray) -> None:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.where(norms > 0, norms, 1)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)
