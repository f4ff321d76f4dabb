"""Link prediction's pure parts: the edge split, the ranking metrics, the scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distgnn.errors import InputError
from distgnn.partition import linksplit
from distgnn.trainer import linkpred


def test_fractions_parse_and_normalise():
    assert linksplit.parse_fractions("85,5,10") == pytest.approx((0.85, 0.05, 0.10))
    for bad in ("0.9,0.1", "a,b,c", "0.9,0,0.1", "-1,1,1", "0,0,0"):
        with pytest.raises(InputError, match="--link-split"):
            linksplit.parse_fractions(bad)


def test_split_is_seeded_keeps_reverses_together_and_self_loops_in_training():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 5000, 40000)
    dst = rng.integers(0, 5000, 40000)
    fractions = (0.8, 0.1, 0.1)
    split = linksplit.assign(src, dst, fractions, seed=3)
    assert np.array_equal(split, linksplit.assign(src, dst, fractions, seed=3))
    assert np.array_equal(split, linksplit.assign(dst, src, fractions, seed=3)), "an edge and its reverse share a split"
    assert not np.array_equal(split, linksplit.assign(src, dst, fractions, seed=4))
    shares = np.bincount(split, minlength=3) / split.size
    assert shares == pytest.approx(fractions, abs=0.01)
    loops = linksplit.assign(np.arange(100), np.arange(100), (0.01, 0.01, 0.98), seed=0)
    assert (loops == 0).all()


def test_split_edges_stores_each_held_out_pair_once_with_fixed_negatives():
    src = np.array([0, 1, 1, 2, 2, 3, 3, 4] * 50) + np.repeat(np.arange(50) * 5, 8)
    dst = np.array([1, 0, 2, 1, 3, 2, 4, 3] * 50) + np.repeat(np.arange(50) * 5, 8)
    links = linksplit.split_edges(src, dst, 250, (0.6, 0.2, 0.2), seed=1, where="g")
    for pairs in (links.val, links.test):
        assert (pairs.src < pairs.dst).all()
        assert len(set(zip(pairs.src, pairs.dst))) == pairs.src.size
        assert pairs.neg.shape == (pairs.src.size, linksplit.EVAL_NEGATIVES)
    held = set(zip(links.val.src, links.val.dst)) | set(zip(links.test.src, links.test.dst))
    kept = set(zip(np.minimum(src, dst)[links.train], np.maximum(src, dst)[links.train]))
    assert not held & kept, "no held-out pair (in either direction) stays in the graph"
    again = linksplit.split_edges(src, dst, 250, (0.6, 0.2, 0.2), seed=1, where="g")
    assert np.array_equal(again.val.neg, links.val.neg)


def test_a_split_that_leaves_a_set_empty_is_refused():
    with pytest.raises(InputError, match="g: --link-split leaves no validation edge"):
        linksplit.split_edges(np.array([0, 1]), np.array([1, 0]), 2, (0.98, 0.01, 0.01), seed=0, where="g")


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 5, 40).astype(float)
    neg = rng.integers(0, 5, 70).astype(float)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert linkpred.roc_auc(pos, neg) == pytest.approx(brute)


def test_ranking_metrics_count_ties_against_the_positive():
    pos = np.array([5.0, 1.0, 0.0])
    neg = np.array([[1.0] * 3, [0.0, 1.0, 2.0], [0.0] * 3])
    got = linkpred.ranking_metrics(pos, neg)
    ranks = np.array([1, 3, 4])
    assert got["mrr"] == pytest.approx((1 / ranks).mean())
    assert got["hits@10"] == 1.0


@pytest.mark.parametrize("kind", linkpred.SCORERS)
def test_scorers_score_pairs_and_broadcast_over_negatives(kind):
    scorer = linkpred.Scorer(kind, 8)
    h_u, h_v = torch.randn(5, 8), torch.randn(5, 8)
    assert scorer(h_u, h_v).shape == (5,)
    h_n = torch.randn(5, 3, 8)
    assert scorer(h_u.unsqueeze(1).expand_as(h_n), h_n).shape == (5, 3)
    if kind == "dot":
        torch.testing.assert_close(scorer(h_u, h_v), (h_u * h_v).sum(1))


def test_held_out_shares_cover_every_pair_once():
    for count in (0, 1, 7, 100):
        for world in (1, 2, 3):
            covered = [i for r in range(world) for i in range(count)[linkpred.shares(count, r, world)]]
            assert covered == list(range(count))


def test_regression_metrics_match_their_definitions():
    from distgnn.trainer import regression

    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    pred = y + rng.normal(scale=0.3, size=200)
    e = pred - y
    half = [torch.tensor([100.0, (e[s] ** 2).sum(), np.abs(e[s]).sum(), y[s].sum(), (y[s] ** 2).sum()],
                         dtype=torch.float64) for s in (slice(0, 100), slice(100, 200))]
    got = regression.metrics(half[0] + half[1])  # two ranks' sums, reduced
    assert got["mse"] == pytest.approx((e ** 2).mean())
    assert got["mae"] == pytest.approx(np.abs(e).mean())
    assert got["r2"] == pytest.approx(1 - (e ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert np.isnan(regression.metrics(torch.zeros(5, dtype=torch.float64))["mse"])
