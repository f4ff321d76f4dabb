"""The edge split for link prediction: which edges train, which validate and which test.

Pure NumPy. The split is made once, by `partition --link-split`, and stored with the shards,
so every trainer and every rerun sees the same one:

- each edge goes to a split by a hash of its *unordered* pair and the seed, so an edge and
  its reverse always share a split and the answer depends on nothing but the pair (no
  ordering, no sort of the whole edge list);
- only the training edges stay in the graph the servers hold: validation and test edges,
  and their reverses, are never used for message passing;
- every validation and test pair is stored once, with EVAL_NEGATIVES destination nodes
  drawn uniformly from a generator seeded by the seed: the same negatives for every run,
  so MRR and Hits@k of two runs compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distgnn.errors import InputError

EVAL_NEGATIVES = 100
"""Negatives stored per validation/test pair (Hits@50 needs at least 50)."""

SPLITS = ("train", "val", "test")
_TRAIN, _VAL, _TEST = range(3)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.85,0.05,0.1' (or '85,5,10') -> fractions of train, val and test that sum to 1."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise InputError(f"--link-split {text!r}: expected three non-negative numbers TRAIN,VAL,TEST "
                         "such as 0.85,0.05,0.1")
    total = sum(values)
    train, val, test = (v / total for v in values)
    if train <= 0 or val <= 0 or test <= 0:
        raise InputError(f"--link-split {text!r}: train, validation and test each need a share above 0")
    return train, val, test


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uniform 64-bit output for nearby inputs."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def assign(src: np.ndarray, dst: np.ndarray, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """uint8 split of every edge (0 train, 1 val, 2 test); self-loops always train."""
    lo = np.minimum(src, dst).astype(np.uint64)
    hi = np.maximum(src, dst).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _mix(_mix(lo ^ _mix(np.full(1, seed, dtype=np.uint64))) ^ hi)
    u = (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    split = np.full(src.shape[0], _TRAIN, dtype=np.uint8)
    train, val, _test = fractions
    split[u >= train] = _VAL
    split[u >= train + val] = _TEST
    split[src == dst] = _TRAIN
    return split


def unique_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unordered pair once, as (smaller id, larger id), sorted."""
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0) if lo.size else np.empty((0, 2), np.int64)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def negatives(count: int, num_nodes: int, seed: int, salt: int) -> np.ndarray:
    """int64 [count, EVAL_NEGATIVES] uniform node ids, the same for the same seed and salt."""
    rng = np.random.default_rng([seed, salt])
    return rng.integers(0, num_nodes, size=(count, EVAL_NEGATIVES), dtype=np.int64)


@dataclass(frozen=True)
class EvalPairs:
    """One evaluation split: positive pairs (old ids) and their fixed negatives."""

    src: np.ndarray
    dst: np.ndarray
    neg: np.ndarray
    """int64 [n, EVAL_NEGATIVES]: negative destinations of each pair."""


@dataclass(frozen=True)
class LinkSplit:
    train: np.ndarray
    """bool per input edge: kept in the graph (message passing and training positives)."""
    val: EvalPairs
    test: EvalPairs
    fractions: tuple[float, float, float]
    seed: int

    def summary(self) -> dict:
        return {
            "fractions": list(self.fractions), "seed": self.seed, "negatives": EVAL_NEGATIVES,
            "train_edges": int(self.train.sum()), "val_pairs": int(self.val.src.size),
            "test_pairs": int(self.test.src.size),
        }


def split_edges(src: np.ndarray, dst: np.ndarray, num_nodes: int, fractions: tuple[float, float, float],
                seed: int, where: str) -> LinkSplit:
    """The whole split of one edge list; an InputError naming `where` when a split is empty."""
    split = assign(src, dst, fractions, seed)
    sets = []
    for code, name in ((_VAL, "validation"), (_TEST, "test")):
        chosen = split == code
        u, v = unique_pairs(src[chosen], dst[chosen])
        if u.size == 0:
            raise InputError(f"{where}: --link-split leaves no {name} edge ({int(src.size)} edges); "
                             "raise its share or use a larger graph")
        sets.append(EvalPairs(u, v, negatives(u.size, num_nodes, seed, code)))
    train = split == _TRAIN
    if not train.any():
        raise InputError(f"{where}: --link-split leaves no edge for training")
    return LinkSplit(train=train, val=sets[0], test=sets[1], fractions=fractions, seed=seed)
