"""k-way METIS on a symmetric CSR graph with several balance constraints.

pymetis.part_graph (2025.2) always passes ncon=1 to METIS and silently reads only
the first N vertex weights, so multi-constraint balancing (train nodes and edges,
as DistDGL does) is impossible through it. We therefore call METIS_PartGraphKway
through ctypes, handing it the NumPy buffers without copies: from the system's
libmetis when it has 32-bit ids (half the memory, faster), else from the METIS 5.1
build that pymetis bundles. ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from distgnn.errors import InputError

METIS_OK = 1
METIS_NOPTIONS = 40  # metis.h 5.1: size of the options array
METIS_OP_KMETIS = 1  # moptype_et
COARSEN_PER_PART = 250

# METIS 5.1's ctrl_t (libmetis/struct.h): six int enums, then idx_t fields in this order.
# Only the first two are written; the others are read back to prove the layout.
_CTRL_ENUMS_BYTES = 6 * 4
_CTRL_FIELDS = ("CoarsenTo", "nIparts", "no2hop", "minconn", "contig", "nseps", "ufactor",
                "compress", "ccorder", "seed", "ncuts", "niter", "numflag")


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
    coarsen_per_part: int | None = COARSEN_PER_PART
    """Coarsen until at most this many vertices per part remain (see coarsen_to); None
    keeps METIS 5.1's own stopping point."""
    initial_tries: int | None = 1
    """Partitionings of the coarsest graph tried, the best kept (METIS's nIparts); None
    keeps METIS 5.1's rule (4 or 5). One, as DGL's own METIS build sets it: on PubMed into
    4 parts METIS took 0.024 s instead of 0.082 s for a 4% larger cut (still a quarter
    below DGL's), on a 200k-node synthetic graph 0.64 instead of 0.83 s for the same cut
    within 0.1%, and on the 2M-node one it made no difference. Applies only where METIS
    runs step by step (the public call has no such option)."""


def coarsen_to(num_nodes: int, num_parts: int, per_part: int | None) -> int:
    """The vertex count at which k-way coarsening stops.

    METIS 5.1 stops at max(nvtxs / (20 log2 k), 30 k) vertices, a size tuned for meshes,
    whose edges shrink with their vertices. Contracting a small-world graph barely removes
    edges: the 2M-node / 20M-edge synthetic graph still had 32.5M of its 39.9M adjacency
    entries at METIS's 37,653-vertex stopping point, and the initial partitioning (five
    recursive bisections of that dense graph) took 15 of METIS's 29 s. Coarsening on to
    250 vertices a part costs a few more cheap levels: METIS took 12.7-14.5 s with the
    same edge cut (14.98%) and balance; on PubMed (METIS's own target is below the cap
    there) nothing changes.
    """
    log2 = max(num_parts.bit_length() - 1, 1)  # gk_log2: floor(log2 k)
    metis_default = max(num_nodes // (20 * log2), 30 * num_parts)
    if per_part is None:
        return metis_default
    return max(30 * num_parts, min(metis_default, per_part * num_parts))


LIBRARY_ENV = "DISTGNN_METIS_LIBRARY"
"""Path of a METIS 5 shared library to use instead of the automatic choice."""


@dataclass(frozen=True)
class MetisLibrary:
    """A loaded METIS 5 shared library and the width of its integers (idx_t)."""

    path: str
    idx_bits: int
    cdll: ctypes.CDLL = field(repr=False, compare=False)
    tunable: bool = False
    """Whether its k-way driver can be run step by step with our coarsening target: its
    internal entry points are exported and its ctrl_t has METIS 5.1's layout."""
    fallback: str = ""
    """Why a preferred library was passed over for this one (the report prints it)."""

    @property
    def dtype(self) -> type[np.signedinteger]:
        return np.int32 if self.idx_bits == 32 else np.int64

    def fits(self, *counts: int) -> bool:
        """Whether every count (nodes, adjacency entries, weight totals) fits in idx_t."""
        return all(c <= np.iinfo(self.dtype).max for c in counts)

    def idx(self) -> type[ctypes.c_int32] | type[ctypes.c_int64]:
        return ctypes.c_int32 if self.idx_bits == 32 else ctypes.c_int64

    def to_json(self) -> dict:
        out = {"library": self.path, "idx_bits": self.idx_bits, "stepwise": self.tunable}
        if self.fallback:
            out["fallback"] = self.fallback
        return out


def _open(path: str) -> MetisLibrary:
    cdll = ctypes.CDLL(path)
    # METIS has no call that reports its idx_t width, but METIS_SetDefaultOptions writes
    # METIS_NOPTIONS idx_t values of -1: a 32-bit build fills only the first half of an
    # array sized for 64-bit ones and leaves the sentinel in the rest.
    probe = np.full(METIS_NOPTIONS, 0x5A5A5A5A5A5A5A5A, dtype=np.int64)
    cdll.METIS_SetDefaultOptions.restype = ctypes.c_int
    cdll.METIS_SetDefaultOptions(_ptr(probe))
    half = METIS_NOPTIONS // 2
    bits = 32 if probe[half] == 0x5A5A5A5A5A5A5A5A else 64
    cdll.METIS_PartGraphKway.restype = ctypes.c_int
    cdll.METIS_PartGraphKway.argtypes = [ctypes.c_void_p] * 13
    library = MetisLibrary(path=path, idx_bits=bits, cdll=cdll)
    return replace(library, tunable=_bind_internals(library))


def _bind_internals(lib: MetisLibrary) -> bool:
    """Declare the internal k-way entry points and check ctrl_t's layout on a probe.

    SetupCtrl is given distinctive option values; only if each reads back at its 5.1
    offset is the library used step by step. Anything else (another METIS version, a
    build without exported internals) keeps the public METIS_PartGraphKway.
    """
    c, idx, vp = lib.cdll, lib.idx(), ctypes.c_void_p
    try:
        c.gk_malloc_init.restype = ctypes.c_int
        c.gk_malloc_cleanup.argtypes = [ctypes.c_int]
        c.libmetis__SetupCtrl.restype = vp
        c.libmetis__SetupCtrl.argtypes = [ctypes.c_int, vp, idx, idx, vp, vp]
        c.libmetis__SetupGraph.restype = vp
        c.libmetis__SetupGraph.argtypes = [vp, idx, idx, vp, vp, vp, vp, vp]
        c.libmetis__SetupKWayBalMultipliers.argtypes = [vp, vp]
        c.libmetis__AllocateWorkSpace.argtypes = [vp, vp]
        c.libmetis__MlevelKWayPartitioning.restype = idx
        c.libmetis__MlevelKWayPartitioning.argtypes = [vp, vp, vp]
        c.libmetis__FreeCtrl.argtypes = [vp]
    except AttributeError:
        return False
    probe = {"SEED": 4242, "NITER": 7, "NCUTS": 3, "UFACTOR": 27}
    opts = _options(lib, probe)
    ctrl = c.libmetis__SetupCtrl(METIS_OP_KMETIS, opts.ctypes.data, 2, 5, None, None)
    if not ctrl:
        return False
    try:
        fields = _CtrlFields(lib, ctrl)
        optype = ctypes.c_int.from_address(ctrl).value
        read = {"SEED": fields["seed"], "NITER": fields["niter"], "NCUTS": fields["ncuts"],
                "UFACTOR": fields["ufactor"]}
        return optype == METIS_OP_KMETIS and read == probe
    finally:
        c.libmetis__FreeCtrl(ctypes.byref(ctypes.c_void_p(ctrl)))


class _CtrlFields:
    """Read/write view of ctrl_t's leading idx_t fields at a ctrl_t address."""

    def __init__(self, lib: MetisLibrary, ctrl: int) -> None:
        self._array = (lib.idx() * len(_CTRL_FIELDS)).from_address(ctrl + _CTRL_ENUMS_BYTES)

    def __getitem__(self, name: str) -> int:
        return int(self._array[_CTRL_FIELDS.index(name)])

    def __setitem__(self, name: str, value: int) -> None:
        self._array[_CTRL_FIELDS.index(name)] = value


def _options(lib: MetisLibrary, values: dict[str, int]) -> np.ndarray:
    opts = np.zeros(METIS_NOPTIONS, dtype=lib.dtype)
    lib.cdll.METIS_SetDefaultOptions(_ptr(opts))
    for name, value in values.items():
        opts[_option_index(name)] = value
    return opts


@lru_cache(maxsize=None)
def available_libraries() -> tuple[MetisLibrary, ...]:
    """METIS builds found here, preferred first.

    A system libmetis (Debian's libmetis5 is built with 32-bit idx_t) comes first: on the
    2M-node / 20M-edge graph it needed half the memory (2.3 vs 4.6 GiB held by METIS) of
    the 64-bit build inside pymetis, at the same edge cut and no slower (31.5-32.5 s
    against 32.4-38.4 s). pymetis's build is the fallback, and the only choice for graphs
    too big for 32-bit ids.
    With DISTGNN_METIS_LIBRARY set, that library alone is used.
    """
    import ctypes.util
    import os

    forced = os.environ.get(LIBRARY_ENV)
    if forced:
        try:
            return (_open(forced),)
        except OSError as err:
            raise InputError(f"{LIBRARY_ENV}={forced}: cannot load METIS: {err}") from None
    found, fallback = [], ""
    system = ctypes.util.find_library("metis")
    if system is not None:
        try:
            lib = _open(system)
        except (OSError, AttributeError):  # not a METIS 5 build: use the bundled one
            fallback = f"{system} is not a METIS 5 library; using the METIS inside pymetis"
        else:
            if lib.tunable:
                found.append(lib)
            else:
                # Without the internals our coarsening target cannot be set, and the cut
                # would depend on which build a host happens to have: take pymetis's, as
                # every host has it.
                fallback = (f"{system} lacks METIS 5.1's internal entry points (libmetis__SetupCtrl, ...); "
                            "using the METIS inside pymetis")
    import pymetis._internal as internal  # the extension module links METIS in

    found.append(replace(_open(internal.__file__), fallback=fallback))
    return tuple(sorted(found, key=lambda lib: lib.idx_bits))


def choose_library(num_nodes: int, num_adjacent: int, weight_total: int) -> MetisLibrary:
    """The preferred library whose idx_t holds this graph's sizes."""
    libraries = available_libraries()
    for lib in libraries:
        if lib.fits(num_nodes, num_adjacent, weight_total):
            return lib
    raise InputError(
        f"graph too large for METIS here: {num_nodes} nodes, {num_adjacent} adjacency entries, "
        f"weight total {weight_total}; libraries: {', '.join(lib.path for lib in libraries)}"
    )


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def _option_index(name: str) -> int:
    from pymetis._internal import options_indices

    return int(getattr(options_indices, name))


def part_kway(
    indptr: np.ndarray,
    indices: np.ndarray,
    num_parts: int,
    vwgt: np.ndarray | None,
    options: MetisOptions,
    library: MetisLibrary | None = None,
    adjwgt: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Partition a symmetric, duplicate- and self-loop-free CSR graph.

    vwgt is integer [N, ncon] (row-major) or None; adjwgt, integer [len(indices)] or
    None, weighs each adjacency entry (a coarsened graph's edge multiplicities). `library` defaults to
    choose_library's pick; arrays already in its integer width are used in place.
    Returns (part int64 [N], edge cut as METIS counts it: undirected edges of the
    symmetric graph).
    """
    n = int(indptr.shape[0] - 1)
    if num_parts == 1 or n == 0:
        return np.zeros(n, dtype=np.int64), 0
    if library is None:
        library = choose_library(n, int(indices.shape[0]), largest_weight_total(vwgt, n))
    idx = library.dtype
    xadj = np.ascontiguousarray(indptr, dtype=idx)
    adjncy = np.ascontiguousarray(indices, dtype=idx)
    if adjncy.size == 0:
        adjncy = np.zeros(1, dtype=idx)  # METIS dereferences it even when empty
    ncon = np.array([1 if vwgt is None else vwgt.shape[1]], dtype=idx)
    weights = None if vwgt is None else np.ascontiguousarray(vwgt, dtype=idx)
    edge_weights = None if adjwgt is None or adjwgt.size == 0 else np.ascontiguousarray(adjwgt, dtype=idx)
    opts = _options(library, {
        "SEED": options.seed, "NITER": options.niter, "NCUTS": options.ncuts,
        "UFACTOR": options.ufactor, "NUMBERING": 0,
    })
    part = np.empty(n, dtype=idx)
    if _stepwise(library, options):
        target = planned_coarsen_to(library, n, num_parts, options)
        objval = _kway_stepwise(library, n, int(ncon[0]), xadj, adjncy, weights, num_parts, opts, part, target,
                                options.initial_tries, edge_weights)
        return part.astype(np.int64, copy=False), objval
    nvtxs = np.array([n], dtype=idx)
    nparts = np.array([num_parts], dtype=idx)
    objval = np.zeros(1, dtype=idx)
    status = library.cdll.METIS_PartGraphKway(
        _ptr(nvtxs), _ptr(ncon), _ptr(xadj), _ptr(adjncy),
        None if weights is None else _ptr(weights),
        None, None if edge_weights is None else _ptr(edge_weights), _ptr(nparts), None, None,
        _ptr(opts), _ptr(objval), _ptr(part),
    )
    if status != METIS_OK:
        raise RuntimeError(f"METIS_PartGraphKway ({library.path}) failed with status {status}")
    return part.astype(np.int64, copy=False), int(objval[0])


def planned_coarsen_to(library: MetisLibrary, num_nodes: int, num_parts: int, options: MetisOptions) -> int:
    """The coarsening target part_kway will use with this library: ours where it can run
    METIS step by step, METIS's own otherwise."""
    return coarsen_to(num_nodes, num_parts, options.coarsen_per_part if _stepwise(library, options) else None)


def planned_initial_tries(library: MetisLibrary, options: MetisOptions) -> int | None:
    """The number of initial partitionings part_kway will ask for (None: METIS's rule)."""
    return options.initial_tries if _stepwise(library, options) else None


def _stepwise(library: MetisLibrary, options: MetisOptions) -> bool:
    return library.tunable and (options.coarsen_per_part is not None or options.initial_tries is not None)


def _kway_stepwise(lib: MetisLibrary, n: int, ncon: int, xadj: np.ndarray, adjncy: np.ndarray,
                   weights: np.ndarray | None, num_parts: int, opts: np.ndarray, part: np.ndarray,
                   target: int, initial_tries: int | None = None,
                   adjwgt: np.ndarray | None = None) -> int:
    """METIS_PartGraphKway's own steps (kmetis.c, 5.1), with our coarsening target and
    number of initial partitionings (None: METIS's rule).

    Unlike the public call this installs no signal trap (that needs setjmp in the
    caller), so an internal METIS error ends the process as METIS's own programs do;
    the inputs are validated before this point. gk_malloc_cleanup frees whatever METIS
    allocated, on every path.
    """
    c = lib.cdll
    if not c.gk_malloc_init():
        raise MemoryError("METIS could not set up its allocator")
    try:
        ctrl = c.libmetis__SetupCtrl(METIS_OP_KMETIS, opts.ctypes.data, ncon, num_parts, None, None)
        if not ctrl:
            raise RuntimeError(f"METIS ({lib.path}) rejected the options")
        graph = c.libmetis__SetupGraph(
            ctrl, n, ncon, xadj.ctypes.data, adjncy.ctypes.data,
            None if weights is None else weights.ctypes.data, None,
            None if adjwgt is None else adjwgt.ctypes.data,
        )
        c.libmetis__SetupKWayBalMultipliers(ctrl, graph)
        fields = _CtrlFields(lib, ctrl)
        fields["CoarsenTo"] = target
        if initial_tries is None:
            initial_tries = 4 if target == 30 * num_parts else 5  # METIS's own rule
        fields["nIparts"] = initial_tries
        c.libmetis__AllocateWorkSpace(ctrl, graph)
        objval = int(c.libmetis__MlevelKWayPartitioning(ctrl, graph, part.ctypes.data))  # frees graph
        c.libmetis__FreeCtrl(ctypes.byref(ctypes.c_void_p(ctrl)))
        return objval
    finally:
        c.gk_malloc_cleanup(0)


def largest_weight_total(vwgt: np.ndarray | None, n: int) -> int:
    """The largest column total of the vertex weights: METIS sums each in idx_t."""
    if vwgt is None or vwgt.size == 0:
        return n
    return int(vwgt.sum(axis=0, dtype=np.int64).max())
