"""The shard format: the only module that writes or reads a partition folder.

Layout of a partition folder ROOT (FORMAT_VERSION 2). Each per-part table is an Arrow
dataset with the part as a hive partition column, so any Arrow tool reads a whole table,
e.g. `pyarrow.dataset.dataset(ROOT / "nodes", partitioning="hive")` or DuckDB's
`read_parquet('ROOT/edges/*/*.parquet', hive_partitioning=true)`:

    ROOT/manifest.json          whole-run facts: counts, ranges, schema, statistics,
                                sha256 of every file, versions, command
    ROOT/assignment.parquet     orig_id -> new_id, part (sorted by orig_id)
    ROOT/parts/part-00000.json  everything a host needs about the whole partitioning
                                (all parts' ranges, schema) plus this part's checksums
    ROOT/nodes/part=0/data.parquet  id, orig_id, [feat, label, target, masks]: the part's nodes
    ROOT/edges/part=0/data.parquet  src, dst, eid, in_part: the part's edges (dst inside,
                                in_part=true, eid = the part's edge range in order), then the
                                edges from this part's nodes into other parts (in_part=false)
    ROOT/halo/part=0/data.parquet   id, orig_id, owner: the other parts' nodes those edges
                                touch, and the part that owns each

Node ids are the renumbered global ids: part p owns [node_ranges[p][0], node_ranges[p][1]).
Format 1 (part-NNNNN/ folders) is refused with a line saying to re-partition.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgnn.errors import ShardError
from distgnn.graph.data import MASK_NAMES

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ASSIGNMENT = "assignment.parquet"
PARTS_DIR = "parts"
DATA_FILE = "data.parquet"
NODES = "nodes"
EDGES = "edges"
HALO = "halo"
PART_TABLES = (NODES, EDGES, HALO)
"""The per-part tables, each a hive-partitioned folder ROOT/<table>/part=<p>/."""
LINK_FILES = {"val": "link_val.parquet", "test": "link_test.parquet"}
"""Link prediction's held-out pairs (partition --link-split), at the root: src, dst (new ids)
and neg, the fixed negative destinations of each pair."""

_HASH_CHUNK = 8 << 20
_WRITE_BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class PartRef:
    """Where one part's files lie in a partition folder (the one place their names are built)."""

    root: Path
    part: int

    @property
    def info_path(self) -> Path:
        return self.root / PARTS_DIR / f"part-{self.part:05d}.json"

    def table_path(self, table: str) -> Path:
        return self.root / table / f"part={self.part}" / DATA_FILE

    def files(self) -> list[Path]:
        """The part's info file and its table files."""
        return [self.info_path, *(self.table_path(t) for t in PART_TABLES)]

    def make_dirs(self) -> None:
        self.info_path.parent.mkdir(parents=True, exist_ok=True)
        for table in PART_TABLES:
            self.table_path(table).parent.mkdir(parents=True, exist_ok=False)

    def __str__(self) -> str:
        return f"{self.root} part {self.part}"


def part_ref(root: str | os.PathLike, part: int) -> PartRef:
    return PartRef(Path(root), part)


@dataclass(frozen=True, kw_only=True)
class FeatureSchema:
    """Which node data the shards carry."""

    feat_dim: int
    """Width of the float32 `feat` column; 0 when the graph has no features."""
    has_label: bool
    masks: tuple[str, ...]
    """The subset of MASK_NAMES present, in MASK_NAMES order."""
    num_classes: int | None = None
    has_target: bool = False
    """A float32 `target` column (node regression; NaN: no target)."""

    def to_json(self) -> dict:
        return {**asdict(self), "masks": list(self.masks)}

    @classmethod
    def from_json(cls, data: dict) -> "FeatureSchema":
        return cls(
            feat_dim=int(data["feat_dim"]),
            has_label=bool(data["has_label"]),
            masks=tuple(data["masks"]),
            num_classes=data.get("num_classes"),
            has_target=bool(data.get("has_target", False)),
        )


@dataclass(frozen=True, kw_only=True)
class PartInfo:
    """part.json: what one host knows about the whole partitioning."""

    graph_name: str
    part_id: int
    num_parts: int
    num_nodes: int
    num_edges: int
    method: str
    node_ranges: tuple[tuple[int, int], ...]
    edge_ranges: tuple[tuple[int, int], ...]
    schema: FeatureSchema
    files: dict = field(default_factory=dict)
    """File name -> {"sha256", "bytes", "rows"} for this part's Parquet files."""

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "graph_name": self.graph_name,
            "part_id": self.part_id,
            "num_parts": self.num_parts,
            "num_nodes": self.num_nodes,
            "num_edges": self.num_edges,
            "method": self.method,
            "node_ranges": [list(r) for r in self.node_ranges],
            "edge_ranges": [list(r) for r in self.edge_ranges],
            "schema": self.schema.to_json(),
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: dict) -> "PartInfo":
        return cls(
            graph_name=data["graph_name"],
            part_id=int(data["part_id"]),
            num_parts=int(data["num_parts"]),
            num_nodes=int(data["num_nodes"]),
            num_edges=int(data["num_edges"]),
            method=data["method"],
            node_ranges=tuple(tuple(int(x) for x in r) for r in data["node_ranges"]),
            edge_ranges=tuple(tuple(int(x) for x in r) for r in data["edge_ranges"]),
            schema=FeatureSchema.from_json(data["schema"]),
            files=data["files"],
        )

    @property
    def node_range(self) -> tuple[int, int]:
        return self.node_ranges[self.part_id]

    @property
    def edge_range(self) -> tuple[int, int]:
        return self.edge_ranges[self.part_id]


@dataclass(kw_only=True)
class PartNodes:
    """A part's own nodes, in global id order."""

    id: np.ndarray
    orig_id: np.ndarray
    feat: np.ndarray | None
    label: np.ndarray | None
    masks: dict[str, np.ndarray]
    target: np.ndarray | None = None


@dataclass(kw_only=True)
class PartEdges:
    """The part's own edges first (in_part; eid = the part's edge range, ascending), then
    its edges into other parts."""

    src: np.ndarray
    dst: np.ndarray
    eid: np.ndarray
    in_part: np.ndarray


@dataclass(kw_only=True)
class PartHalo:
    """Other parts' nodes adjacent to this part, ascending by global id, with their owner part."""

    id: np.ndarray
    orig_id: np.ndarray
    owner: np.ndarray


@dataclass(kw_only=True)
class PartShard:
    """One part read back. Arrays come from Arrow and may be read-only."""

    ref: PartRef
    info: PartInfo
    nodes: PartNodes
    edges: PartEdges
    halo: PartHalo


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """manifest.json read back; `data` keeps every field (statistics, report, versions)."""

    root: Path
    graph_name: str
    num_parts: int
    num_nodes: int
    num_edges: int
    node_ranges: tuple[tuple[int, int], ...]
    edge_ranges: tuple[tuple[int, int], ...]
    schema: FeatureSchema
    files: dict[str, str]
    data: dict

    def part_ref(self, part: int) -> PartRef:
        return part_ref(self.root, part)


# ---------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- writing


def _integer_encodings(schema: pa.Schema) -> dict[str, str]:
    """DELTA_BINARY_PACKED for every integer column.

    Every integer column of a shard is either ascending (id, orig_id, eid, halo ids,
    the assignment's orig_id) or holds node ids, parts or labels, far narrower than 64
    bits, so storing differences in as few bits as they need shrinks it several times
    over: a part of the 2M-node graph's edges.parquet went from 138 to 29 MB, which cut
    its write from 0.26-0.37 to 0.21 s, its sha256 from 0.12 to 0.03 s and its read
    from 0.06 to 0.05 s. It is a standard Parquet encoding, so the columns still read
    as plain int64/int32 in any Parquet reader.
    """
    return {f.name: "DELTA_BINARY_PACKED" for f in schema if pa.types.is_integer(f.type)}


def _write_table(path: Path, table: pa.Table) -> dict:
    # Random float features do not compress and dictionary encoding of unique ids only
    # costs time, so both are off; one row group per file keeps reads zero-copy.
    # Batches of 64k rows (not 1k) cut the encoder's per-batch overhead: 17% less CPU
    # on a 500k-row, 64-d nodes table; the values written are the same.
    pq.write_table(
        table,
        path,
        compression="none",
        use_dictionary=False,
        column_encoding=_integer_encodings(table.schema),
        row_group_size=max(1, table.num_rows),
        write_batch_size=_WRITE_BATCH_ROWS,
    )
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rows": table.num_rows}


def _feat_field(dim: int) -> pa.Field:
    # Declared non-null at both levels, so Parquet has fewer definition levels to encode
    # per value: 15-30% less time writing and reading a 500k x 64 column, same values.
    item = pa.field("item", pa.float32(), nullable=False)
    return pa.field("feat", pa.list_(item, dim), nullable=False)


def nodes_table(nodes: PartNodes) -> pa.Table:
    schema = nodes_schema(FeatureSchema(
        feat_dim=0 if nodes.feat is None else int(nodes.feat.shape[1]),
        has_label=nodes.label is not None,
        masks=tuple(m for m in MASK_NAMES if m in nodes.masks),
        has_target=nodes.target is not None,
    ))
    arrays = [pa.array(nodes.id), pa.array(nodes.orig_id)]
    if nodes.feat is not None:
        flat = pa.array(np.ascontiguousarray(nodes.feat, dtype=np.float32).reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, type=schema.field("feat").type))
    if nodes.label is not None:
        arrays.append(pa.array(nodes.label))
    if nodes.target is not None:
        arrays.append(pa.array(np.asarray(nodes.target, dtype=np.float32)))
    arrays += [pa.array(nodes.masks[name]) for name in MASK_NAMES if name in nodes.masks]
    return pa.Table.from_arrays(arrays, schema=schema)


def nodes_schema(schema: FeatureSchema) -> pa.Schema:
    """nodes.parquet's columns for a part with this feature schema."""
    fields = [pa.field("id", pa.int64()), pa.field("orig_id", pa.int64())]
    if schema.feat_dim:
        fields.append(_feat_field(schema.feat_dim))
    if schema.has_label:
        fields.append(pa.field("label", pa.int64()))
    if schema.has_target:
        fields.append(pa.field("target", pa.float32()))
    fields += [pa.field(name, pa.bool_()) for name in MASK_NAMES if name in schema.masks]
    return pa.schema(fields)


EDGES_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("eid", pa.int64()), ("in_part", pa.bool_())])
HALO_SCHEMA = pa.schema([("id", pa.int64()), ("orig_id", pa.int64()), ("owner", pa.int32())])
ASSIGNMENT_SCHEMA = pa.schema([("orig_id", pa.int64()), ("new_id", pa.int64()), ("part", pa.int32())])


def edges_table(edges: PartEdges) -> pa.Table:
    return pa.Table.from_arrays([pa.array(edges.src), pa.array(edges.dst), pa.array(edges.eid),
                                 pa.array(edges.in_part)], schema=EDGES_SCHEMA)


def halo_table(halo: PartHalo) -> pa.Table:
    return pa.Table.from_arrays([pa.array(halo.id), pa.array(halo.orig_id),
                                 pa.array(halo.owner.astype(np.int32, copy=False))], schema=HALO_SCHEMA)


def assignment_table(orig_id: np.ndarray, new_id: np.ndarray, part: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays([pa.array(orig_id), pa.array(new_id),
                                 pa.array(part.astype(np.int32, copy=False))], schema=ASSIGNMENT_SCHEMA)


def write_part(ref: PartRef, info: PartInfo, nodes: PartNodes, edges: PartEdges, halo: PartHalo) -> PartInfo:
    """Write one part's tables and info file; returns `info` with the files' checksums filled in."""
    ref.make_dirs()
    files = {
        NODES: _write_table(ref.table_path(NODES), nodes_table(nodes)),
        EDGES: _write_table(ref.table_path(EDGES), edges_table(edges)),
        HALO: _write_table(ref.table_path(HALO), halo_table(halo)),
    }
    return write_part_info(ref, replace(info, files=files))


def write_part_info(ref: PartRef, info: PartInfo) -> PartInfo:
    """The info file of a part whose tables are written (info.files filled in, keyed by table)."""
    _write_json(ref.info_path, info.to_json())
    return info


def write_assignment(root: Path, orig_to_new: np.ndarray, part: np.ndarray) -> str:
    """Write assignment.parquet; returns its sha256."""
    orig = np.arange(orig_to_new.shape[0], dtype=np.int64)
    return _write_table(root / ASSIGNMENT, assignment_table(orig, orig_to_new, part))["sha256"]


class TableWriter:
    """One shard table written batch by batch (the bounded-memory path).

    Same schema, encodings and options as the one-shot writer; each batch becomes a row
    group, so the file holds several. Every reader (ours included) reads it as one
    table, the columns concatenated.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.rows = 0
        self._writer = pq.ParquetWriter(
            path, schema, compression="none", use_dictionary=False,
            column_encoding=_integer_encodings(schema), write_batch_size=_WRITE_BATCH_ROWS,
        )

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table, row_group_size=table.num_rows)
            self.rows += table.num_rows

    def close(self) -> dict:
        """Finish the file; returns its {"sha256", "bytes", "rows"} entry."""
        self._writer.close()
        return {"sha256": sha256_file(self.path), "bytes": self.path.stat().st_size, "rows": self.rows}

    def abort(self) -> None:
        self._writer.close()


def link_pairs_schema(negatives: int) -> pa.Schema:
    return pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("neg", pa.list_(pa.int64(), negatives))])


def write_link_pairs(root: Path, split: str, src: np.ndarray, dst: np.ndarray, neg: np.ndarray) -> str:
    """Write one held-out split of link prediction; returns its sha256."""
    neg = np.ascontiguousarray(neg, dtype=np.int64)
    table = pa.Table.from_arrays(
        [pa.array(src, pa.int64()), pa.array(dst, pa.int64()),
         pa.FixedSizeListArray.from_arrays(pa.array(neg.reshape(-1)), neg.shape[1])],
        schema=link_pairs_schema(neg.shape[1]),
    )
    return _write_table(root / LINK_FILES[split], table)["sha256"]


def read_link_pairs(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, neg [n, k]) of one held-out split; ShardError when the shards have none."""
    path = Path(root) / LINK_FILES[split]
    if not path.exists():
        raise ShardError(f"{path}: missing; partition with --link-split to train link prediction")
    table = _read_table(path)
    neg = table.column("neg").combine_chunks()
    width = neg.type.list_size
    values = neg.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return (_np(table, "src", path).astype(np.int64), _np(table, "dst", path).astype(np.int64),
            values.reshape(-1, width))


def write_manifest(root: Path, data: dict, known: dict[str, str] | None = None) -> None:
    """Write manifest.json with the sha256 of every other file under root.

    `known` maps relative paths to checksums computed while writing, so the big
    Parquet files are not read a second time.
    """
    known = known or {}
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(root).as_posix()
            files[rel] = known.get(rel) or sha256_file(path)
    _write_json(root / MANIFEST, {"format_version": FORMAT_VERSION, **data, "files": files})


def patch_manifest_report(root: Path, extra: dict) -> None:
    """Add entries to the manifest's report (figures known only once it is written)."""
    path = root / MANIFEST
    data = json.loads(path.read_text())
    data.setdefault("report", {}).update(extra)
    _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------- reading


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: unreadable {what}: {err}") from None
    if not isinstance(data, dict):
        raise ShardError(f"{path}: {what} is not a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise ShardError(f"{path}: shard format {version}, written by an older distgnn; this one reads format "
                         f"{FORMAT_VERSION}: partition the graph again")
    if version != FORMAT_VERSION:
        raise ShardError(f"{path}: format_version {version!r} is not {FORMAT_VERSION}")
    return data


def read_manifest(root: str | os.PathLike) -> Manifest:
    root = Path(root)
    data = _load_json(root / MANIFEST, "manifest")
    try:
        return Manifest(
            root=root,
            graph_name=data["graph_name"],
            num_parts=int(data["num_parts"]),
            num_nodes=int(data["num_nodes"]),
            num_edges=int(data["num_edges"]),
            node_ranges=tuple(tuple(r) for r in data["node_ranges"]),
            edge_ranges=tuple(tuple(r) for r in data["edge_ranges"]),
            schema=FeatureSchema.from_json(data["schema"]),
            files=data["files"],
            data=data,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ShardError(f"{root / MANIFEST}: missing or bad field {err}") from None


def read_part_info(ref: PartRef) -> PartInfo:
    path = ref.info_path
    if not path.exists() and (ref.root / f"part-{ref.part:05d}").is_dir():
        raise ShardError(f"{ref.root}: shard format 1 (part-NNNNN folders), written by an older distgnn; this "
                         f"one reads format {FORMAT_VERSION}: partition the graph again")
    data = _load_json(path, "part info")
    try:
        return PartInfo.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ShardError(f"{path}: missing or bad field {err}") from None


def verify_part(ref: PartRef, info: PartInfo | None = None) -> None:
    """Raise ShardError naming the first file whose sha256 differs from the part's info file."""
    info = info or read_part_info(ref)
    for table in PART_TABLES:
        path = ref.table_path(table)
        expected = info.files.get(table, {}).get("sha256")
        if not path.is_file():
            raise ShardError(f"{path}: missing shard file")
        if sha256_file(path) != expected:
            raise ShardError(f"{path}: sha256 does not match {ref.info_path} (file changed or corrupt)")


def _read_table(path: Path) -> pa.Table:
    # Memory-mapped reads skip a copy through read() buffers: 22% less CPU reading the
    # four parts of the 2M-node graph. Shard files are never rewritten in place.
    # ParquetFile.read decodes each column of our one row group into one array, so
    # to_numpy is a view; pq.read_table splits it into 128k-row chunks that to_numpy
    # and combine_chunks copy again: materialising a part of the 2M-node graph peaked
    # at 904 MB that way, 738 MB this way.
    try:
        return pq.ParquetFile(path, memory_map=True).read()
    except (OSError, pa.ArrowException) as err:
        raise ShardError(f"{path}: unreadable Parquet: {err}") from None


def _np(table: pa.Table, name: str, path: Path) -> np.ndarray:
    if name not in table.column_names:
        raise ShardError(f"{path}: missing column {name!r}")
    return table.column(name).to_numpy()


def _feat(table: pa.Table, dim: int, path: Path) -> np.ndarray:
    if "feat" not in table.column_names:
        raise ShardError(f"{path}: missing column 'feat'")
    column = table.column("feat").combine_chunks()
    values = column.flatten().to_numpy()
    return values.reshape(-1, dim) if dim else values.reshape(len(column), 0)


def read_part(ref: PartRef, verify: bool = True) -> PartShard:
    """Read one part; with verify, check every table file against the part's info file.

    The checksums are computed in a second thread while the tables are decoded (both
    release the GIL); nothing is returned unless they match.
    """
    from concurrent.futures import ThreadPoolExecutor

    info = read_part_info(ref)
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(verify_part, ref, info) if verify else None
        try:
            nodes, edges, halo = _read_tables(ref, info)
        except ShardError:
            if checked is not None:
                checked.result()  # a checksum mismatch is the better explanation
            raise
        if checked is not None:
            checked.result()
    lo, hi = info.node_range
    if nodes.id.shape[0] != hi - lo:
        raise ShardError(f"{ref.table_path(NODES)}: {nodes.id.shape[0]} rows, {ref.info_path} says {hi - lo}")
    return PartShard(ref=ref, info=info, nodes=nodes, edges=edges, halo=halo)


def _read_tables(ref: PartRef, info: PartInfo) -> tuple[PartNodes, PartEdges, PartHalo]:
    nodes_path, edges_path, halo_path = (ref.table_path(t) for t in PART_TABLES)
    nt = _read_table(nodes_path)
    schema = info.schema
    nodes = PartNodes(
        id=_np(nt, "id", nodes_path),
        orig_id=_np(nt, "orig_id", nodes_path),
        feat=_feat(nt, schema.feat_dim, nodes_path) if schema.feat_dim else None,
        label=_np(nt, "label", nodes_path) if schema.has_label else None,
        masks={m: _np(nt, m, nodes_path) for m in schema.masks},
        target=_np(nt, "target", nodes_path) if schema.has_target else None,
    )
    et = _read_table(edges_path)
    edges = PartEdges(
        src=_np(et, "src", edges_path), dst=_np(et, "dst", edges_path),
        eid=_np(et, "eid", edges_path), in_part=_np(et, "in_part", edges_path),
    )
    ht = _read_table(halo_path)
    halo = PartHalo(
        id=_np(ht, "id", halo_path), orig_id=_np(ht, "orig_id", halo_path),
        owner=_np(ht, "owner", halo_path),
    )
    return nodes, edges, halo


def read_assignment(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(new_id, part) indexed by original node id."""
    path = Path(root) / ASSIGNMENT
    table = _read_table(path)
    return _np(table, "new_id", path), _np(table, "part", path)
