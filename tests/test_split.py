"""Trainer shares when hosts run different trainer counts (distgnn.trainer.split)."""

from __future__ import annotations

import torch

from distgnn.trainer import split


def test_even_slices_cover_every_id_once_and_differ_by_at_most_one():
    ids = torch.arange(100, 163)
    slices = [split.even_slice(ids, r, 5) for r in range(5)]
    assert torch.equal(torch.cat(slices), ids)
    assert {len(s) for s in slices} <= {12, 13}


def test_flagged_ids_read_in_blocks(monkeypatch):
    monkeypatch.setattr(split, "_BLOCK", 7)
    flags = torch.zeros(50, dtype=torch.bool)
    flags[[0, 6, 7, 13, 49]] = True
    assert split.flagged_ids(flags, 50).tolist() == [0, 6, 7, 13, 49]
    assert split.flagged_ids(torch.zeros(0, dtype=torch.bool), 0).tolist() == []


def test_layout_comes_from_the_launcher_only_when_hosts_differ():
    assert split.host_layout({}) is None
    assert split.host_layout({split.TRAINERS_ENV: "2,1"}) == [2, 1]
