"""The in-memory graph every reader produces and the partitioner consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MASK_NAMES = ("train_mask", "val_mask", "test_mask")


@dataclass(kw_only=True)
class GraphData:
    """A homogeneous directed graph with optional node data.

    Arrays are NumPy and already validated by the reader that built this object
    (see `distgnn.graph.validate`): ids are in range, features finite.
    """

    name: str
    """Graph name; becomes DGL's graph_name, so letters, digits, '_' and '-' only."""
    num_nodes: int
    src: np.ndarray
    """int64 [E]: source node id of each edge."""
    dst: np.ndarray
    """int64 [E]: destination node id of each edge (edges are owned by the destination's part)."""
    feat: np.ndarray | None = None
    """float32 [N, D] node features, or None."""
    label: np.ndarray | None = None
    """int64 [N] class labels, -1 for unlabeled, or None."""
    target: np.ndarray | None = None
    """float32 [N] regression targets, NaN for a node without one, or None."""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    """Subset of MASK_NAMES -> bool [N]."""
    num_classes: int | None = None
    source: str = ""
    """Where the graph came from (a path or a synthetic spec), for the manifest."""

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    @property
    def feat_dim(self) -> int:
        return 0 if self.feat is None else int(self.feat.shape[1])

    def nbytes(self) -> int:
        arrays = [self.src, self.dst, self.feat, self.label, self.target, *self.masks.values()]
        return sum(a.nbytes for a in arrays if a is not None)
