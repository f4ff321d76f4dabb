"""Synthetic graphs with community structure, heavy-tailed degrees and learnable labels.

Spec: `synthetic:nodes=N,degree=D,classes=C,feat_dim=F,seed=S[,train=0.1,val=0.05,test=0.1]`
(optional `homophily=0.8`, `communities=4` per class). Only `nodes` is required.

The model, chosen to resemble real graphs enough to exercise METIS, sampling
and training:

- Nodes are dealt at random into M = C * communities_per_class communities of
  near-equal size (fewer, but at least C, if that leaves under 8 per
  community); community k belongs to class k mod C, which is every member's
  label. So a class is several separate clusters, as topics are in citation
  graphs.
- Each node has a popularity weight w = 1 + Pareto(alpha=2), so a few hubs hold
  much of the weight and the degree distribution is heavy-tailed.
- Each of the N * D edges draws its source with probability proportional to w.
  With probability `homophily` its destination is drawn proportionally to w among
  the source's community, otherwise among all nodes. The rare self loop is
  pointed at a random other member of the community, so there are exactly
  N * D edges and no self loops.
- Features are the class centroid (a random unit vector) times `signal`, plus
  standard normal noise: a linear model on features alone is well above chance
  but far from perfect; averaging over in-neighbours, mostly of the same class,
  removes noise, which is what a GNN can use.
- train/val/test masks are disjoint random subsets of exactly the requested
  fractions of the nodes; every node is labeled.

Vectorised sampling: sources are drawn as multinomial out-degree counts per
node (so edges come grouped by source); destinations are read at uniformly
random positions of a table in which each node appears about weight-
proportionally often. Both avoid a binary search over cumulative weights per
edge, which is slow and cache-hostile at 20M edges.

Pieces: the per-node draws (the dealing, popularity, out-degrees) come from
`Generator(PCG64(seed))`; every fixed-size piece of edges or feature rows has its
own generator seeded by (seed, stream, piece). So the graph can be written piece
by piece (`spill_synthetic`: a 300M-edge graph never exists in memory at once)
and the same spec gives identical arrays whichever way it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from distgnn.errors import InputError
from distgnn.graph.data import GraphData
from distgnn.graph.progress import report

PREFIX = "synthetic:"
PARETO_ALPHA = 2.0
FEATURE_BLOCK_ROWS = 1 << 16
"""Feature rows drawn per piece (16 MiB at 64 features)."""
EDGE_PIECE = 1 << 20
"""Edges drawn per piece: the most a reader holds of a graph of any size."""
TABLE_PER_MEMBER = 8
GLOBAL_TABLE_PER_MEMBER = 2
"""The table for edges drawn among all nodes is shorter: it has one entry per draw slot
of every node of the graph, so it is the generator's largest array (int32)."""
MIN_COMMUNITY_SIZE = 8


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Parameters of a synthetic graph (see the module docstring for the model)."""

    nodes: int
    """Number of nodes."""
    degree: int = 10
    """Edges drawn per node (before self loops are dropped)."""
    classes: int = 16
    """Number of label classes."""
    feat_dim: int = 64
    """Feature dimension."""
    seed: int = 0
    """Seed of the only random generator used."""
    train: float = 0.1
    """Fraction of nodes in train_mask."""
    val: float = 0.05
    """Fraction of nodes in val_mask."""
    test: float = 0.1
    """Fraction of nodes in test_mask."""
    homophily: float = 0.8
    """Probability that an edge stays inside its source's community."""
    communities: int = 4
    """Communities per class."""
    signal: float = 1.5
    """Length of the class centroid added to unit-variance feature noise."""

    def __post_init__(self) -> None:
        for name in ("nodes", "degree", "classes", "feat_dim", "communities"):
            if getattr(self, name) < 1:
                raise InputError(f"synthetic spec: {name} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.nodes < 2:
            raise InputError(f"synthetic spec: nodes must be at least 2, got {self.nodes}")
        if self.classes > self.nodes:
            raise InputError(f"synthetic spec: classes ({self.classes}) must not exceed "
                             f"nodes ({self.nodes})")
        if self.seed < 0:
            raise InputError(f"synthetic spec: seed must be >= 0, got {self.seed}")
        for name in ("train", "val", "test", "homophily"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"synthetic spec: {name} must be in [0, 1], got {value}")
        if self.train + self.val + self.test > 1.0 + 1e-9:
            raise InputError("synthetic spec: train + val + test must not exceed 1, got "
                             f"{self.train + self.val + self.test:g}")
        if self.signal < 0:
            raise InputError(f"synthetic spec: signal must be >= 0, got {self.signal}")

    @property
    def num_communities(self) -> int:
        # at least MIN_COMMUNITY_SIZE members each, but one community per class at least
        return max(self.classes, min(self.classes * self.communities,
                                     self.nodes // MIN_COMMUNITY_SIZE))

    @property
    def name(self) -> str:
        return (f"synthetic-n{self.nodes}-d{self.degree}-c{self.classes}"
                f"-f{self.feat_dim}-s{self.seed}")


_INT_KEYS = {"nodes", "degree", "classes", "feat_dim", "seed", "communities"}


def is_synthetic(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse_spec(spec: str) -> SyntheticConfig:
    """`synthetic:key=value,...` -> SyntheticConfig (InputError names the bad key)."""
    body = spec[len(PREFIX):] if is_synthetic(spec) else spec
    known = {f.name for f in fields(SyntheticConfig)}
    values: dict[str, int | float] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise InputError(f"synthetic spec: expected key=value, got {item!r}")
        if key not in known:
            raise InputError(f"synthetic spec: unknown key {key!r} "
                             f"(known: {', '.join(sorted(known))})")
        if key in values:
            raise InputError(f"synthetic spec: key {key!r} given twice")
        values[key] = _number(key, text.strip())
    if "nodes" not in values:
        raise InputError(f"synthetic spec: 'nodes' is required, e.g. "
                         f"{PREFIX}nodes=100000,degree=10")
    return SyntheticConfig(**values)


def _number(key: str, text: str) -> int | float:
    try:
        if key in _INT_KEYS:
            return int(text.replace("_", ""))
        return float(text)
    except ValueError:
        kind = "an integer" if key in _INT_KEYS else "a number"
        raise InputError(f"synthetic spec: {key} must be {kind}, got {text!r}") from None


def _child(cfg: SyntheticConfig, stream: int, index: int) -> np.random.Generator:
    """The generator of one fixed-size piece: seeded by (seed, stream, index), so every
    piece can be drawn alone, in any order, and the graph never depends on how a reader
    batches it."""
    return np.random.Generator(np.random.PCG64([cfg.seed, stream, index]))


def _table(rng: np.random.Generator, members: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Each member about weight-proportionally often (multinomial counts, repeated).

    Indexing it uniformly at random draws members by weight with one gather instead of
    a binary search per draw; the quantisation of the probabilities this implies is
    itself random and unbiased.
    """
    return np.repeat(members.astype(np.int32 if members.size < 2**31 else np.int64),
                     rng.multinomial(size, weights / weights.sum()))


@dataclass(kw_only=True)
class _Skeleton:
    """The per-node draws every piece needs (O(nodes) memory)."""

    dealt: np.ndarray
    """A random permutation: community k is dealt[k::M]."""
    label: np.ndarray
    weight: np.ndarray
    out_degree: np.ndarray
    local_out: np.ndarray


def _skeleton(cfg: SyntheticConfig) -> _Skeleton:
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    dealt = rng.permutation(cfg.nodes)
    label = np.empty(cfg.nodes, np.int64)
    label[dealt] = np.arange(cfg.nodes) % cfg.num_communities % cfg.classes
    weight = 1.0 + rng.pareto(PARETO_ALPHA, cfg.nodes)
    out_degree = rng.multinomial(cfg.nodes * cfg.degree, weight / weight.sum())
    local_out = rng.binomial(out_degree, cfg.homophily)
    return _Skeleton(dealt=dealt, label=label, weight=weight, out_degree=out_degree, local_out=local_out)


def edge_pieces(cfg: SyntheticConfig, sk: _Skeleton):
    """(src, dst) pieces of at most about EDGE_PIECE edges: each community's local edges
    first, then the edges drawn among all nodes, by blocks of source nodes."""
    m = cfg.num_communities
    position = np.empty(cfg.nodes, np.int64)
    position[sk.dealt] = np.arange(cfg.nodes)
    for k in range(m):
        members = sk.dealt[k::m]
        counts = sk.local_out[members]
        rng = _child(cfg, 1, k)
        table = _table(rng, members, sk.weight[members], TABLE_PER_MEMBER * members.shape[0])
        src = np.repeat(members, counts)
        for at in range(0, src.shape[0], EDGE_PIECE):
            piece = src[at:at + EDGE_PIECE]
            dst = table[rng.integers(0, table.shape[0], piece.shape[0])].astype(np.int64)
            _redirect_self_loops(rng, piece, dst, sk.dealt, position, m)
            yield piece, dst
    everyone = np.arange(cfg.nodes, dtype=np.int64)
    table = _table(_child(cfg, 2, 0), everyone, sk.weight, GLOBAL_TABLE_PER_MEMBER * cfg.nodes)
    remote = sk.out_degree - sk.local_out
    step = max(1, EDGE_PIECE // max(1, cfg.degree))
    for block, at in enumerate(range(0, cfg.nodes, step)):
        rng = _child(cfg, 3, block)
        src = np.repeat(everyone[at:at + step], remote[at:at + step])
        dst = table[rng.integers(0, table.shape[0], src.shape[0])].astype(np.int64)
        _redirect_self_loops(rng, src, dst, sk.dealt, position, m)
        yield src, dst


def _redirect_self_loops(rng: np.random.Generator, src: np.ndarray, dst: np.ndarray,
                         dealt: np.ndarray, position: np.ndarray, num_communities: int) -> None:
    """Point each self loop at another member of the node's community, in place.

    Cheaper than compacting both edge arrays, keeps exactly N * D edges and the
    homophily; a node alone in its community gets a uniformly random other node.
    """
    loops = np.flatnonzero(src == dst)
    if loops.size == 0:
        return
    n, m = dealt.shape[0], num_communities
    # community k holds the positions k, k + m, k + 2m, ... of `dealt`
    at = position[src[loops]]
    k, index = at % m, at // m
    size = (n - k + m - 1) // m
    shifted = (index + rng.integers(1, np.maximum(size, 2))) % size
    anywhere = (dst[loops] + rng.integers(1, n, loops.size)) % n
    dst[loops] = np.where(size > 1, dealt[k + m * shifted], anywhere)


def feature_pieces(cfg: SyntheticConfig, label: np.ndarray):
    """(first row, float32 rows) blocks of FEATURE_BLOCK_ROWS rows: class centroid + noise."""
    centroids = _child(cfg, 4, 0).standard_normal((cfg.classes, cfg.feat_dim))
    centroids *= cfg.signal / np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = centroids.astype(np.float32)
    for block, start in enumerate(range(0, cfg.nodes, FEATURE_BLOCK_ROWS)):
        rows = label[start:start + FEATURE_BLOCK_ROWS]
        feat = _child(cfg, 5, block).standard_normal((rows.shape[0], cfg.feat_dim), dtype=np.float32)
        feat += centroids[rows]
        yield start, feat


def _masks(cfg: SyntheticConfig) -> dict[str, np.ndarray]:
    order = _child(cfg, 6, 0).permutation(cfg.nodes)
    masks, start = {}, 0
    for name, fraction in (("train_mask", cfg.train), ("val_mask", cfg.val),
                           ("test_mask", cfg.test)):
        size = int(round(fraction * cfg.nodes))
        mask = np.zeros(cfg.nodes, np.bool_)
        mask[order[start:start + size]] = True
        masks[name] = mask
        start += size
    return masks


def generate(cfg: SyntheticConfig, *, progress=None) -> GraphData:
    """The whole graph in memory: the pieces of edge_pieces and feature_pieces joined."""
    report(progress, "synthetic", 0, 3)
    sk = _skeleton(cfg)
    src = np.empty(cfg.nodes * cfg.degree, np.int64)
    dst = np.empty(cfg.nodes * cfg.degree, np.int64)
    at = 0
    for s, d in edge_pieces(cfg, sk):
        src[at:at + s.shape[0]], dst[at:at + s.shape[0]] = s, d
        at += s.shape[0]
    report(progress, "synthetic", 1, 3)
    feat = np.empty((cfg.nodes, cfg.feat_dim), np.float32)
    for start, rows in feature_pieces(cfg, sk.label):
        feat[start:start + rows.shape[0]] = rows
    report(progress, "synthetic", 2, 3)
    masks = _masks(cfg)
    report(progress, "synthetic", 3, 3)
    return GraphData(name=cfg.name, num_nodes=cfg.nodes, src=src, dst=dst, feat=feat,
                     label=sk.label, masks=masks, num_classes=cfg.classes,
                     source=f"{PREFIX}{_spec_body(cfg)}")


def spill_synthetic(spec: str, writer, *, rows: int, progress=None):
    """Write the graph of `spec` to a SpillWriter piece by piece: the same arrays as
    generate(), never more than one piece of edges or features in memory."""
    cfg = parse_spec(spec)
    sk = _skeleton(cfg)
    total = cfg.nodes * cfg.degree
    for s, d in edge_pieces(cfg, sk):
        writer.add_edges(s, d)
        report(progress, "synthetic edges", writer.num_edges, total)
    sk.out_degree = sk.local_out = None  # not needed for the node rows
    masks = _masks(cfg)
    for start, rows_ in feature_pieces(cfg, sk.label):
        stop = start + rows_.shape[0]
        writer.add_nodes(rows_.shape[0], feat=rows_, label=sk.label[start:stop],
                         masks={name: mask[start:stop] for name, mask in masks.items()})
        report(progress, "synthetic nodes", stop, cfg.nodes)
    return writer.finish(name=cfg.name, source=f"{PREFIX}{_spec_body(cfg)}", num_nodes=cfg.nodes,
                         num_classes=cfg.classes)


def _spec_body(cfg: SyntheticConfig) -> str:
    return ",".join(f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg))


def load_synthetic(spec: str, *, progress=None) -> GraphData:
    return generate(parse_spec(spec), progress=progress)
