"""The trainer and the graph server."""

# DGL's sampler processes are spawned: they import the trainer's main module, hence this
# package, before they unpickle a DistGraph and map the servers' shared memory. This is the
# one place that runs early enough in them to give DGL this job's segment names.
from distgnn.trainer import shm as _shm

_shm.install_from_env()
