"""Coarse topic clusters of the item space (the profiles' L1 level): spherical k-means over unit item vectors."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

__all__ = ["TopicClusters", "fit_topic_clusters"]


@dataclass(frozen=True)
class TopicClusters:
    centroids: np.ndarray  # (C, d) unit rows
    version: int = 0

    @property
    def n(self) -> int:
        return len(self.centroids)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Cluster id (B,) of each unit vector (B, d); zero vectors go to cluster 0."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.centroids.shape[1])
        return np.argmax(vectors @ self.centroids.T, axis=1).astype(np.int32)


def fit_topic_clusters(vectors: np.ndarray, n_clusters: int, seed: int = 0, iters: int = 20, redo: int = 3,
                       version: int = 0) -> TopicClusters:  # fmt: skip
    """Spherical k-means (FAISS) over the non-zero rows of ``vectors`` (N, d)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    x = x[np.linalg.norm(x, axis=1) > 0]
    k = max(1, min(n_clusters, len(x)))
    if len(x) == 0:
        raise ValueError("cannot cluster an empty catalogue")
    km = faiss.Kmeans(x.shape[1], k, niter=iters, nredo=redo, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100_000)  # fmt: skip
    km.train(x)
    centroids = km.centroids / np.maximum(np.linalg.norm(km.centroids, axis=1, keepdims=True), 1e-12)
    return TopicClusters(centroids.astype(np.float32), version)
