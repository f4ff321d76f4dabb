"""Input graphs for the partition tests, built directly (not through distgnn.graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distgnn.graph.data import MASK_NAMES, GraphData

PUBMED = Path(__file__).resolve().parents[1] / "data" / "pubmed"


def pubmed() -> GraphData:
    edges = pq.read_table(PUBMED / "edges.parquet")
    nodes = pq.read_table(PUBMED / "nodes.parquet")
    feat = nodes.column("feat").combine_chunks()
    dim = feat.type.list_size
    return GraphData(
        name="pubmed",
        num_nodes=nodes.num_rows,
        src=edges.column("src").to_numpy().astype(np.int64),
        dst=edges.column("dst").to_numpy().astype(np.int64),
        feat=feat.flatten().to_numpy().reshape(-1, dim),
        label=nodes.column("label").to_numpy().astype(np.int64),
        masks={m: nodes.column(m).to_numpy(zero_copy_only=False) for m in MASK_NAMES},
        num_classes=3,
        source=str(PUBMED),
    )


def random_graph(num_nodes: int = 300, num_edges: int = 2000, feat_dim: int = 8, seed: int = 0,
                 *, masks: bool = True, name: str = "rand") -> GraphData:
    """A directed random graph with duplicate edges and self loops on purpose."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    src[:5], dst[:5] = 3, 3  # self loops
    src[5:10], dst[5:10] = 1, 2  # duplicates
    split = rng.random(num_nodes)
    return GraphData(
        name=name,
        num_nodes=num_nodes,
        src=src.astype(np.int64),
        dst=dst.astype(np.int64),
        feat=rng.standard_normal((num_nodes, feat_dim)).astype(np.float32) if feat_dim else None,
        label=rng.integers(0, 4, num_nodes).astype(np.int64),
        masks={"train_mask": split < 0.3, "val_mask": (split >= 0.3) & (split < 0.5),
               "test_mask": split >= 0.5} if masks else {},
        num_classes=4,
        source=f"random:{seed}",
    )
