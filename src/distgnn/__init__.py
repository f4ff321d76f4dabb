"""distgnn: distributed GNN training on DGL."""

__version__ = "0.1.0"
