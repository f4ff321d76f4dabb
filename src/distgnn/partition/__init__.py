"""Partitioning: symmetric CSR + METIS -> node assignment -> Parquet shards (shards.py
owns the format) -> DGL 2.1 partition files per part (to_dgl.py); `partition` CLI."""

from distgnn.partition.shards import (
    FORMAT_VERSION,
    Manifest,
    PartInfo,
    PartShard,
    PartRef,
    part_ref,
    read_manifest,
    read_part,
)

__all__ = ["FORMAT_VERSION", "Manifest", "PartInfo", "PartShard", "PartRef", "part_ref", "read_manifest", "read_part"]
