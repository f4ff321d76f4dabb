"""Graph inputs: one reader per format, all producing a validated GraphData.

`load_graph(spec)` reads a Parquet graph folder, an edge list (csv/tsv/txt), a
`dgl.save_graphs` file or a `synthetic:...` spec; `probe_graph(spec)` returns
their sizes from metadata only.
"""

from distgnn.graph.data import MASK_NAMES, GraphData
from distgnn.graph.load import GraphSpec, Progress, load_graph, resolve_spec
from distgnn.graph.probe import GraphProbe, probe_graph
from distgnn.graph.synthetic import SyntheticConfig, generate, parse_spec
from distgnn.graph.validate import sanitize_name, validate_graph

__all__ = [
    "MASK_NAMES",
    "GraphData",
    "GraphProbe",
    "GraphSpec",
    "Progress",
    "SyntheticConfig",
    "generate",
    "load_graph",
    "parse_spec",
    "probe_graph",
    "resolve_spec",
    "sanitize_name",
    "validate_graph",
]
