"""The trainer's remote-feature cache: which halo nodes it keeps, and that it serves exact rows."""

from __future__ import annotations

import pytest
import torch

from distgnn.trainer.features import FeatureCache, hottest_halo


def test_hottest_halo_ranks_by_edges_into_the_part_then_id():
    inner = torch.tensor([1, 1, 0, 0, 0, 0, 0], dtype=torch.uint8)
    global_id = torch.tensor([10, 11, 40, 30, 20, 50, 60])
    into = torch.tensor([5, 5, 2, 7, 2, 0, 1])
    assert hottest_halo(inner, global_id, into, 10).tolist() == [30, 20, 40, 60]  # 50 has no edge in
    assert hottest_halo(inner, global_id, into, 2).tolist() == [30, 20]
    assert hottest_halo(inner, global_id, into, 0).tolist() == []


def _table(n: int = 50, d: int = 4) -> torch.Tensor:
    return torch.arange(n * d, dtype=torch.float32).reshape(n, d)


def _recording_fetch(table: torch.Tensor):
    """A fetch from `table`, and the list of the id lists it was asked for."""
    asked: list[list[int]] = []

    def fetch(ids: torch.Tensor) -> torch.Tensor:
        asked.append(ids.tolist())
        return table[ids]

    return fetch, asked


def test_cache_serves_exact_rows_and_fetches_only_the_misses():
    table = _table()
    fetch, asked = _recording_fetch(table)
    cache = FeatureCache.fill(torch.tensor([7, 3, 41]), num_nodes=50, feat_dim=4, fetch=fetch)
    assert cache.size == 3 and cache.nbytes == 3 * 4 * 4 + 50 * 4
    asked.clear()
    nodes = torch.tensor([3, 0, 41, 41, 9, 7])
    x, hits = cache.gather(nodes, fetch)
    assert torch.equal(x, table[nodes]) and hits == 4
    assert asked == [[0, 9]]  # one fetch, for the uncached nodes only
    asked.clear()
    x, hits = cache.gather(torch.tensor([3, 7]), fetch)
    assert torch.equal(x, table[[3, 7]]) and hits == 2 and asked == []


@pytest.mark.parametrize("cached", [[], [5]])
def test_cache_without_hits_is_one_plain_fetch(cached):
    table = _table()
    cache = FeatureCache.fill(torch.tensor(cached, dtype=torch.int64), 50, 4, lambda ids: table[ids])
    x, hits = cache.gather(torch.tensor([1, 2]), lambda ids: table[ids])
    assert torch.equal(x, table[[1, 2]]) and hits == 0


def test_fill_pulls_in_chunks(monkeypatch):
    import distgnn.trainer.features as features

    monkeypatch.setattr(features, "FILL_CHUNK", 2)
    table, sizes = _table(), []
    cache = FeatureCache.fill(torch.tensor([1, 2, 3, 4, 5]), 50, 4, lambda ids: sizes.append(len(ids)) or table[ids])
    assert sizes == [2, 2, 1] and torch.equal(cache.rows[: cache.size], table[[1, 2, 3, 4, 5]])


def test_own_rows_are_read_in_place_and_only_uncached_remote_rows_are_fetched():
    table = _table()
    fetch, asked = _recording_fetch(table)
    # This part owns nodes 20..29; 3 and 41 are cached remote nodes.
    cache = FeatureCache.fill(torch.tensor([3, 41]), 50, 4, fetch).with_local_rows(table[20:30].clone(), 20)
    asked.clear()
    nodes = torch.tensor([25, 3, 20, 41, 9, 29, 9, 48])
    x, hits = cache.gather(nodes, fetch)
    assert torch.equal(x, table[nodes]) and hits == 2
    assert asked == [[9, 9, 48]]  # own rows never go through fetch
    asked.clear()
    x, hits = cache.gather(torch.tensor([21, 41]), fetch)
    assert torch.equal(x, table[[21, 41]]) and hits == 1 and asked == []


def test_local_rows_must_match_the_cached_width():
    cache = FeatureCache.fill(torch.tensor([1]), 10, 4, lambda ids: _table(10)[ids])
    with pytest.raises(ValueError, match="do not match"):
        cache.with_local_rows(torch.zeros(5, 3), 0)


def test_the_budget_holds_the_slot_table_before_any_row():
    from distgnn.trainer.features import rows_within

    assert rows_within(4 * 100 + 16 * 3, num_nodes=100, feat_dim=4) == 3  # 16-byte rows
    assert rows_within(4 * 100 + 15, num_nodes=100, feat_dim=4) == 0
    assert rows_within(100, num_nodes=100, feat_dim=4) == 0  # the table alone does not fit


def test_fetched_remote_rows_are_kept_while_there_is_room():
    table = _table()
    fetch, asked = _recording_fetch(table)
    # Room for 4 rows: 7 from the start, then the first fetched rows until it is full.
    cache = FeatureCache.fill(torch.tensor([7]), 50, 4, fetch, capacity=4).with_local_rows(table[20:30].clone(), 20)
    assert (cache.size, cache.capacity, cache.nbytes) == (1, 4, 16 + 50 * 4)
    asked.clear()
    x, hits = cache.gather(torch.tensor([0, 21, 9, 7, 12, 40]), fetch)
    assert torch.equal(x, table[[0, 21, 9, 7, 12, 40]]) and hits == 1
    assert asked == [[0, 9, 12, 40]] and cache.size == 4  # 0, 9, 12 kept; no room for 40
    asked.clear()
    x, hits = cache.gather(torch.tensor([40, 12, 0, 9, 25]), fetch)
    assert torch.equal(x, table[[40, 12, 0, 9, 25]]) and hits == 3 and asked == [[40]]
    assert cache.size == 4


def test_fill_refuses_more_ids_than_room():
    with pytest.raises(ValueError, match="cannot hold"):
        FeatureCache.fill(torch.tensor([1, 2, 3]), 10, 4, lambda ids: _table(10)[ids], capacity=2)
