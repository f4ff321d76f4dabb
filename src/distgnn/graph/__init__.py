"""Graph inputs: one reader per format, all producing a validated GraphData."""

from distgnn.graph.data import MASK_NAMES, GraphData

__all__ = ["GraphData", "MASK_NAMES"]
