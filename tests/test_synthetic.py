"""The synthetic graph generator: determinism, structure, learnability, spec errors."""

from __future__ import annotations

import numpy as np
import pytest

from distgnn.errors import InputError
from distgnn.graph import load_graph, parse_spec, validate_graph
from distgnn.graph.synthetic import SyntheticConfig, generate

SPEC = "synthetic:nodes=20000,degree=10,classes=16,feat_dim=64,seed=1"


@pytest.fixture(scope="module")
def graph():
    return load_graph(SPEC)


def _arrays(g) -> dict[str, np.ndarray]:
    return {"src": g.src, "dst": g.dst, "feat": g.feat, "label": g.label, **g.masks}


def test_shape_and_invariants(graph):
    assert graph.num_nodes == 20000 and graph.num_edges == 200_000
    assert graph.feat.shape == (20000, 64) and graph.feat.dtype == np.float32
    assert graph.num_classes == 16 and set(np.unique(graph.label)) == set(range(16))
    assert not (graph.src == graph.dst).any()
    assert graph.name == "synthetic-n20000-d10-c16-f64-s1"
    validate_graph(graph, deep=True)


def test_same_seed_same_arrays_other_seed_different(graph):
    again = load_graph(SPEC)
    for key, value in _arrays(graph).items():
        np.testing.assert_array_equal(again_value := _arrays(again)[key], value, err_msg=key)
        assert again_value is not value
    other = load_graph(SPEC.replace("seed=1", "seed=2"))
    for key, value in _arrays(graph).items():
        assert not np.array_equal(_arrays(other)[key], value), key


def test_degrees_are_heavy_tailed(graph):
    in_degree = np.bincount(graph.dst, minlength=graph.num_nodes)
    out_degree = np.bincount(graph.src, minlength=graph.num_nodes)
    assert in_degree.max() > 20 * in_degree.mean()
    assert out_degree.max() > 20 * out_degree.mean()
    assert np.median(in_degree) < in_degree.mean()


def test_masks_are_disjoint_with_requested_sizes(graph):
    masks = graph.masks
    assert [int(masks[k].sum()) for k in ("train_mask", "val_mask", "test_mask")] == [
        2000, 1000, 2000]
    total = masks["train_mask"].astype(int) + masks["val_mask"] + masks["test_mask"]
    assert total.max() == 1


def _nearest_centroid_accuracy(x: np.ndarray, g) -> float:
    train, test = g.masks["train_mask"], g.masks["test_mask"]
    centroids = np.stack([x[train & (g.label == c)].mean(axis=0) for c in range(g.num_classes)])
    distance = ((x[test][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((distance.argmin(axis=1) == g.label[test]).mean())


def test_features_carry_signal_and_neighbours_add_more(graph):
    chance = 1 / graph.num_classes
    homophily = float((graph.label[graph.src] == graph.label[graph.dst]).mean())
    assert homophily > 0.7 > 5 * chance
    own = _nearest_centroid_accuracy(graph.feat, graph)
    summed = np.zeros_like(graph.feat)
    np.add.at(summed, graph.dst, graph.feat[graph.src])
    in_degree = np.bincount(graph.dst, minlength=graph.num_nodes)
    neighbour_mean = summed / np.maximum(in_degree, 1)[:, None]
    with_neighbours = _nearest_centroid_accuracy(graph.feat + neighbour_mean, graph)
    assert 2 * chance < own < 0.6
    assert with_neighbours > own + 0.15


def test_progress_reports_each_phase():
    calls = []
    generate(parse_spec("synthetic:nodes=100"), progress=lambda *a: calls.append(a))
    assert calls == [("synthetic", i, 3) for i in range(4)]


def test_defaults_and_optional_keys():
    cfg = parse_spec("synthetic:nodes=1_000")
    assert (cfg.nodes, cfg.degree, cfg.classes, cfg.feat_dim, cfg.seed) == (1000, 10, 16, 64, 0)
    cfg = parse_spec("synthetic:nodes=40,degree=3,train=0.5,val=0.25,test=0.25,homophily=1")
    g = generate(cfg)
    assert (g.label[g.src] == g.label[g.dst]).all()
    assert not (g.src == g.dst).any()
    assert [int(m.sum()) for m in g.masks.values()] == [20, 10, 10]


def test_small_graph_with_more_communities_than_nodes():
    g = load_graph("synthetic:nodes=20,classes=4,degree=2")
    assert g.num_edges == 40 and set(np.unique(g.label)) == {0, 1, 2, 3}


@pytest.mark.parametrize(("spec", "message"), [
    ("synthetic:degree=3", "'nodes' is required"),
    ("synthetic:nodes=10,colour=3", "unknown key 'colour'"),
    ("synthetic:nodes=ten", "nodes must be an integer, got 'ten'"),
    ("synthetic:nodes=10,train=x", "train must be a number, got 'x'"),
    ("synthetic:nodes=10,degree", "expected key=value, got 'degree'"),
    ("synthetic:nodes=10,nodes=20", "key 'nodes' given twice"),
    ("synthetic:nodes=10,degree=0", "degree must be at least 1, got 0"),
    ("synthetic:nodes=1", "nodes must be at least 2, got 1"),
    ("synthetic:nodes=10,classes=11", "classes (11) must not exceed nodes (10)"),
    ("synthetic:nodes=100,seed=-1", "seed must be >= 0"),
    ("synthetic:nodes=100,val=1.5", "val must be in [0, 1], got 1.5"),
    ("synthetic:nodes=100,train=0.6,val=0.3,test=0.2", "train + val + test must not exceed 1"),
])
def test_bad_spec(spec, message):
    with pytest.raises(InputError) as info:
        load_graph(spec)
    assert message in str(info.value)
    assert str(info.value).startswith("synthetic spec: ")


def test_config_rejects_bad_values_directly():
    with pytest.raises(InputError, match="homophily must be in"):
        SyntheticConfig(nodes=100, homophily=2.0)
