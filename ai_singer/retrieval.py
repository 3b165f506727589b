"""Feature retrieval: pull the source's content features toward the target singer's own (as RVC's index).

Content encoders such as ContentVec leak some of the source singer's timbre into the features. A fine-tuned
singer therefore carries an index of its own content features (k-means centroids of its training frames,
``singers/<name>/retrieval.safetensors``); at conversion each source frame is replaced, in part, by the
distance-weighted mean of its nearest centroids:

    content' = (1 - ratio) * content + ratio * sum_k w_k * centroid_k,   w_k ∝ 1 / (distance_k² + eps)

``ratio = 0`` leaves the features untouched (the default); 1 uses the singer's own features only.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

RETRIEVAL_FILE = "retrieval.safetensors"
INDEX_KEY = "centroids"


def kmeans(features: torch.Tensor, n_centroids: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Centroids ``[K, D]`` (``K = min(n_centroids, N)``) of ``features [N, D]`` by Lloyd's algorithm from a
    k-means++ start (each new seed drawn with probability ∝ squared distance to the nearest seed so far);
    an emptied cluster is re-seeded with the frame its centroid explains worst. Deterministic per ``seed``."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"kmeans needs features [N, D] with N > 0, got shape {tuple(features.shape)}")
    data = features.float()
    k = min(int(n_centroids), data.shape[0])
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(data.shape[0], (1,), generator=generator))]
    nearest = (data - data[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0:  # every frame coincides with a seed: take any frame not chosen yet
            pick = next(i for i in range(data.shape[0]) if i not in set(chosen))
        else:
            pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        chosen.append(pick)
        nearest = torch.minimum(nearest, (data - data[pick]).square().sum(dim=1))
    centroids = data[chosen].clone()
    for _ in range(iterations):
        distances = torch.cdist(data, centroids)                       # [N, K]
        assignment = distances.argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, data)
        counts = torch.bincount(assignment, minlength=k).to(data.dtype)
        empty = counts == 0
        updated = sums / counts.clamp(min=1).unsqueeze(1)
        if empty.any():  # re-seed each empty cluster with a frame its neighbours explain worst
            worst = distances.gather(1, assignment.unsqueeze(1)).squeeze(1).argsort(descending=True)
            updated[empty] = data[worst[: int(empty.sum())]]
        if torch.allclose(updated, centroids):
            centroids = updated
            break
        centroids = updated
    return centroids


def build_index(features: torch.Tensor, n_centroids: int = 1024, max_frames: int = 50_000,
                seed: int = 0) -> torch.Tensor:
    """The singer's index ``[K, D]`` from its content frames ``[N, D]``: k-means centroids of at most
    ``max_frames`` randomly chosen frames (all of them when there are fewer than ``n_centroids``)."""
    if features.shape[0] > max_frames:
        chosen = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))[:max_frames]
        features = features[chosen]
    if features.shape[0] <= n_centroids:
        return features.float().clone()
    return kmeans(features, n_centroids, seed=seed)


def retrieve(content: torch.Tensor, index: torch.Tensor, neighbours: int = 8) -> torch.Tensor:
    """For each frame of ``content [T, D]``, the inverse-squared-distance weighted mean of its
    ``neighbours`` nearest rows of ``index [K, D]``; ``[T, D]``."""
    k = min(int(neighbours), index.shape[0])
    distances, nearest = torch.cdist(content.float(), index.float()).topk(k, dim=1, largest=False)  # [T, k]
    weights = 1.0 / (distances.square() + 1e-6)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (index.float()[nearest] * weights.unsqueeze(-1)).sum(dim=1)


def blend(content: torch.Tensor, index: torch.Tensor | None, ratio: float, neighbours: int = 8) -> torch.Tensor:
    """``content [T, D]`` moved ``ratio`` of the way to its retrieved features; unchanged when ``ratio``
    is 0 or there is no index."""
    if index is None or ratio <= 0 or content.shape[0] == 0:
        return content
    if index.shape[1] != content.shape[1]:
        raise ValueError(f"retrieval index has {index.shape[1]}-dim features, the content encoder gives "
                         f"{content.shape[1]}")
    retrieved = retrieve(content, index, neighbours)
    return ((1.0 - ratio) * content.float() + ratio * retrieved).to(content.dtype)


def save_index(directory: str | os.PathLike, centroids: torch.Tensor) -> Path:
    """Write ``<directory>/retrieval.safetensors`` (float16 centroids [K, D]) atomically; returns it."""
    from safetensors.torch import save_file

    from ai_singer.atomic import atomic_path

    path = Path(directory) / RETRIEVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({INDEX_KEY: centroids.detach().to(torch.float16).contiguous().cpu()}, str(tmp))
    return path


def load_index(directory: str | os.PathLike) -> torch.Tensor | None:
    """The centroids ``[K, D]`` (float32) of ``<directory>/retrieval.safetensors``, or None when the
    singer has no index. Raises ValueError naming the file when it is unreadable."""
    path = Path(directory) / RETRIEVAL_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{path}: not a readable retrieval index ({error})") from error
    centroids = tensors.get(INDEX_KEY)
    if centroids is None or centroids.ndim != 2:
        raise ValueError(f"{path}: no [K, D] tensor {INDEX_KEY!r} in it")
    return centroids.float()
