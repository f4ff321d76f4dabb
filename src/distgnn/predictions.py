"""The batch-inference output format: one Parquet file per trainer rank in a folder.

Node classification: `node_id` (the input graph's original id), `pred` (class), `probs` (class
probabilities), `embedding` (the last hidden layer). Node regression: `node_id`, `pred` (the
predicted value, float32), `embedding`. With `--node-embedding`, every file also has
`node_embedding`, the learned input rows. Link prediction: `node_id` and `embedding`
(the encoder's output, what the scorer compares), ready for a nearest-neighbour index. Written to a temporary name and renamed, so a reader never
sees a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgnn.atomic import atomic_write


def rank_file(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f"predictions-rank{rank:05d}.parquet"


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _write(out_dir: Path, rank: int, columns: dict, node_embedding) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if node_embedding is not None:  # the learned input rows (--node-embedding)
        columns["node_embedding"] = _fixed_list(node_embedding)
    table = pa.table(columns)
    return atomic_write(rank_file(out_dir, rank), lambda f: pq.write_table(table, f))


def write_rank(out_dir: Path, *, rank: int, orig_id, pred, probs, embedding, node_embedding=None) -> Path:
    return _write(out_dir, rank, {
        "node_id": pa.array(np.asarray(orig_id, dtype=np.int64)),
        "pred": pa.array(np.asarray(pred, dtype=np.int64)),
        "probs": _fixed_list(probs),
        "embedding": _fixed_list(embedding),
    }, node_embedding)


def write_values(out_dir: Path, *, rank: int, orig_id, pred, embedding, node_embedding=None) -> Path:
    """Node regression: `node_id`, `pred` (float32), `embedding`."""
    return _write(out_dir, rank, {"node_id": pa.array(np.asarray(orig_id, dtype=np.int64)),
                                  "pred": pa.array(np.asarray(pred, dtype=np.float32)),
                                  "embedding": _fixed_list(embedding)}, node_embedding)


def write_embeddings(out_dir: Path, *, rank: int, orig_id, embedding, node_embedding=None) -> Path:
    return _write(out_dir, rank, {"node_id": pa.array(np.asarray(orig_id, dtype=np.int64)),
                                  "embedding": _fixed_list(embedding)}, node_embedding)


def read_all(out_dir: Path) -> pa.Table:
    """Every rank's predictions, sorted by node id."""
    files = sorted(Path(out_dir).glob("predictions-rank*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no predictions-rank*.parquet files")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by("node_id")
