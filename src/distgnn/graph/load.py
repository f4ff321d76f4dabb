"""`load_graph(spec)`: pick the reader for a graph spec and return a checked GraphData."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distgnn.errors import InputError
from distgnn.graph import dglfile, edgelist, parquet_graph, synthetic
from distgnn.graph.data import GraphData
from distgnn.graph.progress import Progress
from distgnn.graph.validate import validate_graph

Kind = Literal["parquet", "edgelist", "dgl", "synthetic"]


@dataclass(frozen=True, kw_only=True)
class GraphSpec:
    """A graph spec resolved to its format."""

    kind: Kind
    path: Path | None
    """The file or folder; None for synthetic."""
    text: str
    """The spec as given."""


def resolve_spec(spec: str) -> GraphSpec:
    """Classify a spec by form: `synthetic:...`, a folder, or a file suffix."""
    if synthetic.is_synthetic(spec):
        return GraphSpec(kind="synthetic", path=None, text=spec)
    if not spec.strip():
        raise InputError("graph input: empty path")
    path = Path(spec)
    if path.is_dir():
        return GraphSpec(kind="parquet", path=path, text=spec)
    suffix = path.suffix.lower()
    if suffix in edgelist.SUFFIXES:
        kind: Kind = "edgelist"
    elif suffix in dglfile.SUFFIXES:
        kind = "dgl"
    elif not path.exists():
        raise InputError(f"{path}: no such file or directory")
    else:
        known = ", ".join((*edgelist.SUFFIXES, *dglfile.SUFFIXES))
        raise InputError(f"{path}: unknown graph format (expected a Parquet graph folder, "
                         f"a file ending in {known}, or synthetic:nodes=N,...)")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return GraphSpec(kind=kind, path=path, text=spec)


def load_graph(spec: str, *, progress: Progress | None = None) -> GraphData:
    """Read any supported graph input; every bad input is a one-line InputError."""
    resolved = resolve_spec(spec)
    if resolved.kind == "synthetic":
        graph = synthetic.load_synthetic(spec, progress=progress)
    elif resolved.kind == "parquet":
        graph = parquet_graph.load_parquet_folder(resolved.path, progress=progress)
    elif resolved.kind == "edgelist":
        graph = edgelist.load_edge_list(resolved.path, progress=progress)
    else:
        graph = dglfile.load_dgl_file(resolved.path, progress=progress)
    return validate_graph(graph)
