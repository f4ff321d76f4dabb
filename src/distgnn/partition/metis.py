"""k-way METIS on a symmetric CSR graph with several balance constraints.

pymetis.part_graph (2025.2) always passes ncon=1 to METIS and silently reads only
the first N vertex weights, so multi-constraint balancing (train nodes and edges,
as DistDGL does) is impossible through it. We therefore call METIS_PartGraphKway
from the METIS 5.1 library that pymetis bundles, through ctypes, handing it the
NumPy buffers without copies. ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

METIS_OK = 1
METIS_NOPTIONS = 40  # metis.h 5.1: size of the options array


@dataclass(frozen=True, kw_only=True)
class MetisOptions:
    """The METIS knobs we set; everything else keeps METIS's defaults."""

    seed: int = 0
    """METIS_OPTION_SEED: same seed and input give the same partition."""
    niter: int = 10
    """Refinement iterations per level (METIS default 10)."""
    ncuts: int = 1
    """Independent partitionings tried; the best is kept."""
    ufactor: int = -1
    """Allowed imbalance in 1/1000 (-1: METIS default, 30 for k-way)."""


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    import pymetis._internal as internal  # the extension module links METIS in

    lib = ctypes.CDLL(internal.__file__)
    idx_p = ctypes.POINTER(ctypes.c_int64)
    lib.METIS_PartGraphKway.restype = ctypes.c_int
    lib.METIS_PartGraphKway.argtypes = [
        idx_p, idx_p, idx_p, idx_p, idx_p, idx_p, idx_p, idx_p,
        ctypes.c_void_p, ctypes.c_void_p, idx_p, idx_p, idx_p,
    ]
    lib.METIS_SetDefaultOptions.restype = ctypes.c_int
    lib.METIS_SetDefaultOptions.argtypes = [idx_p]
    return lib


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))


def _option_index(name: str) -> int:
    from pymetis._internal import options_indices

    return int(getattr(options_indices, name))


def part_kway(
    indptr: np.ndarray,
    indices: np.ndarray,
    num_parts: int,
    vwgt: np.ndarray | None,
    options: MetisOptions,
) -> tuple[np.ndarray, int]:
    """Partition a symmetric, duplicate- and self-loop-free CSR graph.

    vwgt is int64 [N, ncon] (row-major) or None. Returns (part int64 [N], edge cut
    as METIS counts it: undirected edges of the symmetric graph).
    """
    n = int(indptr.shape[0] - 1)
    if num_parts == 1 or n == 0:
        return np.zeros(n, dtype=np.int64), 0
    lib = _library()
    xadj = np.ascontiguousarray(indptr, dtype=np.int64)
    adjncy = np.ascontiguousarray(indices, dtype=np.int64)
    if adjncy.size == 0:
        adjncy = np.zeros(1, dtype=np.int64)  # METIS dereferences it even when empty
    ncon = np.array([1 if vwgt is None else vwgt.shape[1]], dtype=np.int64)
    weights = None if vwgt is None else np.ascontiguousarray(vwgt, dtype=np.int64)
    opts = np.zeros(METIS_NOPTIONS, dtype=np.int64)
    lib.METIS_SetDefaultOptions(_ptr(opts))
    opts[_option_index("SEED")] = options.seed
    opts[_option_index("NITER")] = options.niter
    opts[_option_index("NCUTS")] = options.ncuts
    opts[_option_index("UFACTOR")] = options.ufactor
    opts[_option_index("NUMBERING")] = 0
    nvtxs = np.array([n], dtype=np.int64)
    nparts = np.array([num_parts], dtype=np.int64)
    objval = np.zeros(1, dtype=np.int64)
    part = np.empty(n, dtype=np.int64)
    status = lib.METIS_PartGraphKway(
        _ptr(nvtxs), _ptr(ncon), _ptr(xadj), _ptr(adjncy),
        None if weights is None else _ptr(weights),
        None, None, _ptr(nparts), None, None,
        _ptr(opts), _ptr(objval), _ptr(part),
    )
    if status != METIS_OK:
        raise RuntimeError(f"METIS_PartGraphKway failed with status {status}")
    return part, int(objval[0])
