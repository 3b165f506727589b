"""Feature retrieval: the index finds the singer's own features; ratio 0 changes nothing; files round-trip."""
from __future__ import annotations

import pytest
import torch

from ai_singer import retrieval


def clusters(n_per: int = 200, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    means = torch.tensor([[5.0] * dim, [-5.0] * dim, [5.0, -5.0] * (dim // 2)])
    points = torch.cat([m + 0.1 * torch.randn(n_per, dim, generator=generator) for m in means])
    return points, means


def test_kmeans_finds_well_separated_clusters():
    points, means = clusters()
    centroids = retrieval.kmeans(points, 3, seed=1)
    assert centroids.shape == (3, 6)
    nearest = torch.cdist(means, centroids).min(dim=1).values
    assert float(nearest.max()) < 0.1  # each true mean has a centroid right on it
    assert torch.equal(centroids, retrieval.kmeans(points, 3, seed=1))  # deterministic


def test_build_index_sizes():
    points, _ = clusters(n_per=10)
    assert torch.equal(retrieval.build_index(points, n_centroids=64), points)  # fewer frames: all of them
    assert retrieval.build_index(points, n_centroids=8).shape == (8, 6)
    with pytest.raises(ValueError, match="N > 0"):
        retrieval.kmeans(torch.zeros(0, 6), 4)


def test_retrieve_and_blend():
    index = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    content = torch.tensor([[0.0, 0.0], [9.0, 1.0]])
    got = retrieval.retrieve(content, index, neighbours=1)
    assert torch.equal(got, torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
    assert torch.equal(retrieval.blend(content, index, 0.0), content)  # off
    assert torch.equal(retrieval.blend(content, None, 0.7), content)   # no index
    half = retrieval.blend(content, index, 0.5, neighbours=1)
    assert torch.allclose(half, torch.tensor([[0.0, 0.0], [9.5, 0.5]]))
    smooth = retrieval.retrieve(content, index, neighbours=3)  # weighted toward the nearest
    assert float(torch.dist(smooth[1], index[1])) < 1.0
    with pytest.raises(ValueError, match="2-dim features, the content encoder gives 3"):
        retrieval.blend(torch.zeros(4, 3), index, 0.5)


def test_index_file_round_trip_and_errors(tmp_path):
    assert retrieval.load_index(tmp_path) is None  # a singer without an index
    centroids = torch.randn(5, 4)
    path = retrieval.save_index(tmp_path, centroids)
    assert path.name == retrieval.RETRIEVAL_FILE
    assert torch.allclose(retrieval.load_index(tmp_path), centroids.half().float())
    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="retrieval.safetensors: not a readable retrieval index"):
        retrieval.load_index(tmp_path)
