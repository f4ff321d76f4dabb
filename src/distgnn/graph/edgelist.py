"""Edge-list text files: `*.csv`, `*.tsv`, `*.txt`.

One edge per line, two integer node ids separated by a comma or by
whitespace (tabs included), sniffed from the first data line. `#` starts a comment; blank
lines are skipped; an optional first data line `src,dst` is a header. A
`nodes.parquet` in the same folder supplies node features, labels, masks and
the node count (see `parquet_graph`).

Parsing uses pandas' C reader in chunks (fast, progress per chunk). When it
fails, the file is scanned again line by line, only then, to name the first
line that is not two integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distgnn.errors import InputError
from distgnn.graph.data import GraphData
from distgnn.graph.parquet_graph import (
    NODES_FILE,
    build_graph,
    max_id_plus_one,
    read_nodes,
)
from distgnn.graph.progress import report
from distgnn.graph.validate import sanitize_name

SUFFIXES = (".csv", ".tsv", ".txt")
CHUNK_ROWS = 4_000_000
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How an edge-list file is laid out, from its first data line."""

    delimiter: str | None
    """',' or None for runs of whitespace (tabs included)."""
    header_line: int | None
    """1-based line number of the `src,dst` header, if any."""


def line_fields(line: str, delimiter: str | None) -> list[str] | None:
    """The fields of a data line, or None for a comment or blank line."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    parts = text.split(delimiter) if delimiter else text.split()
    return [p.strip() for p in parts]


def _is_int(token: str) -> bool:
    try:
        value = int(token)
    except ValueError:
        try:
            number = float(token)
        except ValueError:
            return False
        # pandas reads "3.0" as 3; agree with it so both paths accept the same files
        return number.is_integer() and _INT64.min <= number <= _INT64.max
    return _INT64.min <= value <= _INT64.max


def _open_text(path: Path):
    try:
        return path.open("r", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def sniff(path: Path) -> Layout:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            raw = line.split("#", 1)[0]
            if not raw.strip():
                continue
            delimiter = "," if "," in raw else None
            fields = line_fields(raw, delimiter)
            if len(fields) == 2 and all(_is_int(f) for f in fields):
                return Layout(delimiter=delimiter, header_line=None)
            if [f.lower() for f in fields] == ["src", "dst"]:
                return Layout(delimiter=delimiter, header_line=number)
            raise InputError(f"{path} line {number}: expected two integer node ids "
                             f"or the header 'src,dst', got {raw.strip()[:60]!r}")
    raise InputError(f"{path}: the graph has no edges (no data lines)")


def _data_lines(path: Path, layout: Layout):
    """(line number, fields, raw line) of every data line after the header."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number == layout.header_line:
                continue
            fields = line_fields(line, layout.delimiter)
            if fields is not None:
                yield number, fields, line


def find_bad_line(path: Path, layout: Layout) -> str | None:
    """The error message for the first line that is not two integers."""
    for number, fields, line in _data_lines(path, layout):
        if len(fields) != 2 or not all(_is_int(f) for f in fields):
            return (f"{path} line {number}: expected two integer node ids, "
                    f"got {line.strip()[:60]!r}")
    return None


def line_of_row(path: Path, layout: Layout, row: int) -> int:
    """1-based line number of the row-th (0-based) edge."""
    for index, (number, _, _) in enumerate(_data_lines(path, layout)):
        if index == row:
            return number
    raise IndexError(row)


def edge_chunks(path: Path, layout: Layout, rows: int, progress=None):
    """(src, dst) int64 arrays of up to `rows` edges at a time. A malformed line raises
    pandas' ValueError (or OverflowError): see parse_error."""
    # imported here: pandas adds 40 MB to every process that loads distgnn.graph, and
    # `partition` keeps its RSS low while METIS runs
    import pandas as pd

    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = pd.read_csv(
            handle, sep=layout.delimiter or r"\s+", header=None, comment="#",
            dtype=np.int64, engine="c", skipinitialspace=True, chunksize=max(1, rows),
            skiprows=[layout.header_line - 1] if layout.header_line else None,
        )
        for frame in reader:
            if frame.shape[1] != 2:
                raise ValueError(f"{frame.shape[1]} columns")
            yield frame[0].to_numpy(), frame[1].to_numpy()
            report(progress, "read edges", min(handle.tell(), size), size)


def parse_error(path: Path, layout: Layout, exc: Exception) -> InputError:
    """The one-line error for a file pandas could not parse: the first bad line, found by
    scanning the file again (only now, when something is known to be wrong)."""
    message = find_bad_line(path, layout)
    if message is None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"{path}: cannot parse edge list ({reason})"
    return InputError(message)


def read_edge_list(path: Path, *, progress=None) -> tuple[np.ndarray, np.ndarray, Layout]:
    layout = sniff(path)
    try:
        pieces = list(edge_chunks(path, layout, CHUNK_ROWS, progress))
    except (ValueError, OverflowError) as exc:  # pandas' ParserError is a ValueError
        raise parse_error(path, layout, exc) from None
    if not pieces:
        return np.empty(0, np.int64), np.empty(0, np.int64), layout
    return np.concatenate([a for a, _ in pieces]), np.concatenate([b for _, b in pieces]), layout


def load_edge_list(path: Path, *, progress=None) -> GraphData:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    src, dst, layout = read_edge_list(path, progress=progress)
    nodes_path = path.parent / NODES_FILE
    nodes = read_nodes(nodes_path, progress=progress) if nodes_path.exists() else None
    if nodes is not None:
        num_nodes = nodes.num_rows
    else:
        num_nodes = max_id_plus_one(src, dst, str(path))
    return build_graph(name=sanitize_name(path.stem), source=str(path), src=src, dst=dst,
                       num_nodes=num_nodes, nodes=nodes, num_classes=None,
                       id_where=(str(path), str(path)),
                       row_labels=(row_label(path, layout, "src"),
                                   row_label(path, layout, "dst")))


def row_label(path: Path, layout: Layout, column: str):
    def label(row: int) -> str:
        return f"line {line_of_row(path, layout, row)} ({column})"
    return label
