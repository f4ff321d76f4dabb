"""The trainer's typed configuration, built once from the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distgnn.cliutil import Parser
from distgnn.errors import InputError
from distgnn.metrics import parse_metrics_port
from distgnn.ports import DEFAULT_METRICS_PORT
from distgnn.trainer.inputs import SPARSE_OPTIMIZERS
from distgnn.trainer.linkpred import SCORERS
from distgnn.trainer.model import BUILTIN_MODELS, FEATURE_NORMS, check_architecture
from distgnn.trainer.step import OPTIMIZERS

PRECISIONS = ("fp32", "bf16", "fp16")
TASKS = ("node-classification", "node-regression", "link-prediction")

BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_FEATURE_CACHE_MB = 512
"""Per trainer. On the 2M-node benchmark graph a part's whole halo (549,269 nodes, 64-d) took
142 MiB, fetch went from 1.59 to 0.98 s an epoch and seeds/s rose 6-13% (bench/train.py)."""


def parse_fanouts(text: str) -> tuple[int, ...]:
    """'10,25' -> (10, 25): one fanout per layer, input layer first; -1 means all neighbours."""
    parts = [p.strip() for p in text.split(",")] if text is not None else []
    if not parts or any(p == "" for p in parts):
        raise InputError(f"--fanouts {text!r}: expected comma-separated integers such as 10,25")
    try:
        fanouts = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--fanouts {text!r}: expected comma-separated integers such as 10,25") from None
    if any(f == 0 or f < -1 for f in fanouts):
        raise InputError(f"--fanouts {text!r}: each fanout must be a positive integer or -1 (all neighbours)")
    return fanouts


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one trainer process needs; validated here so the loop never re-checks input."""

    shards: Path
    """Shard folder written by `partition` (manifest.json, part-NNNNN/)."""
    ip_config: Path
    """DGL ip_config.txt: one line per host, host i serves part i."""
    servers_per_host: int = 1
    samplers: int = 0
    """DGL sampler processes per trainer (0: sample in the trainer process)."""
    fanouts: tuple[int, ...] = (10, 25)
    prefetch: int = 0
    """Batches sampled and fetched ahead on a background thread while the model computes (0: off).
    Off by default: it pays only where a host has cores to spare (measured: x1.24 on a 200k-node
    graph, x0.81 on the 2M-node one, on 2 cores shared by two emulated hosts)."""
    feature_cache_mb: int = DEFAULT_FEATURE_CACHE_MB
    """MiB each trainer spends on remote nodes' feature rows and their slot table (0: no cache):
    the halo nodes with the most edges into its part, pulled once at start-up
    (distgnn.trainer.features). With a cache, the part's own rows are also read in place."""
    batch_size: int = 1000
    hidden: int = 256
    dropout: float = 0.5
    epochs: int = 20
    lr: float = 0.003
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    """'adamw' (decoupled weight decay) or 'adam' (L2 in the gradient)."""
    feature_norm: str = "none"
    """'row': L1-normalise each input feature row inside the model; 'none'."""
    task: str = "node-classification"
    """'node-classification', 'node-regression' (a `target` column) or 'link-prediction' (shards
    partitioned with --link-split)."""
    negatives: int = 4
    """Link prediction: uniform negative destinations per positive edge in training."""
    scorer: str = "dot"
    """Link prediction: 'dot' or 'mlp' over the two nodes' embeddings."""
    node_embedding: int = 0
    """Learnable values per node (DistEmbedding), next to the features or instead of them (0: none)."""
    sparse_optimizer: str = "adam"
    """DGL's distributed sparse optimizer for the node embeddings: 'adam' or 'adagrad'."""
    sparse_lr: float = 0.01
    model: str = "sage"
    """'sage', 'gcn', 'gat', or package.module:factory (distgnn.trainer.custom)."""
    heads: int = 4
    """Attention heads per GAT layer."""
    warmup_epochs: int = 1
    min_lr_ratio: float = 0.05
    clip_norm: float = 1.0
    eval_every: int = 1
    eval_fanouts: tuple[int, ...] | None = None
    """Fanouts for validation/test sampling; default: the training fanouts."""
    patience: int = 0
    """Stop after this many evaluations without a better val accuracy (0: never)."""
    precision: str = "fp32"
    backend: str = "auto"
    seed: int = 0
    checkpoint_dir: Path | None = None
    resume: bool = False
    predict_out: Path | None = None
    predict_only: bool = False
    """Skip training: load the latest checkpoint and run batch inference only."""
    run_dir: Path | None = None
    """Where the JSON-lines run log goes (one file per rank)."""
    log_every: int = 20
    metrics_port: int | str = DEFAULT_METRICS_PORT
    metrics_addr: str = "0.0.0.0"
    job_id: str = "distgnn"
    graph_name: str | None = field(default=None)
    """Filled from the shard manifest."""

    def __post_init__(self) -> None:
        self.shards = Path(self.shards)
        self.ip_config = Path(self.ip_config)
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.epochs < 1 and not self.predict_only:
            raise InputError(f"--epochs {self.epochs}: must be at least 1 (use --predict-only to only predict)")
        if self.hidden < 1:
            raise InputError(f"--hidden {self.hidden}: must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"--dropout {self.dropout}: must be in [0, 1)")
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr}: must be positive")
        if self.servers_per_host < 1:
            raise InputError(f"--servers-per-host {self.servers_per_host}: must be at least 1")
        if self.samplers < 0:
            raise InputError(f"--samplers {self.samplers}: must be at least 0")
        if self.prefetch < 0:
            raise InputError(f"--prefetch {self.prefetch}: must be at least 0")
        if self.feature_cache_mb < 0:
            raise InputError(f"--feature-cache-mb {self.feature_cache_mb}: must be at least 0 (0 turns the cache off)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InputError(f"--min-lr-ratio {self.min_lr_ratio}: must be in [0, 1]")
        if self.warmup_epochs < 0:
            raise InputError(f"--warmup-epochs {self.warmup_epochs}: must be at least 0")
        if self.eval_every < 1:
            raise InputError(f"--eval-every {self.eval_every}: must be at least 1")
        if self.patience < 0:
            raise InputError(f"--patience {self.patience}: must be at least 0")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.feature_norm not in FEATURE_NORMS:
            raise InputError(f"--feature-norm {self.feature_norm!r}: expected one of {', '.join(FEATURE_NORMS)}")
        if self.task not in TASKS:
            raise InputError(f"--task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.negatives < 1:
            raise InputError(f"--negatives {self.negatives}: must be at least 1")
        if self.scorer not in SCORERS:
            raise InputError(f"--scorer {self.scorer!r}: expected one of {', '.join(SCORERS)}")
        if self.task == "link-prediction" and self.samplers:
            raise InputError(f"--samplers {self.samplers}: link prediction samples in the trainer process "
                             "(--prefetch overlaps it with the step); use --samplers 0")
        if self.node_embedding < 0:
            raise InputError(f"--node-embedding {self.node_embedding}: must be at least 1 (or 0: none)")
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise InputError(f"--sparse-optimizer {self.sparse_optimizer!r}: expected one of "
                             f"{', '.join(SPARSE_OPTIMIZERS)}")
        if self.sparse_lr <= 0:
            raise InputError(f"--sparse-lr {self.sparse_lr}: must be positive")
        if self.node_embedding and self.precision == "fp16":
            raise InputError("--precision fp16: the sparse optimizer of --node-embedding does not unscale "
                             "fp16 gradients; use bf16 or fp32")
        check_architecture(self.model, self.hidden, self.heads)
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.eval_fanouts is not None and len(self.eval_fanouts) != len(self.fanouts):
            raise InputError("--eval-fanouts: needs one fanout per layer, as many as --fanouts")
        if (self.resume or self.predict_only) and self.checkpoint_dir is None:
            flag = "--resume" if self.resume else "--predict-only"
            raise InputError(f"{flag}: needs --checkpoint-dir")
        if self.predict_only and self.predict_out is None:
            raise InputError("--predict-only: needs --predict-out")

    @property
    def num_layers(self) -> int:
        return len(self.fanouts)

    def to_json(self) -> dict:
        """Plain-JSON form for checkpoints, the run log and the metrics info."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, Path):
                out[k] = str(v)
            elif isinstance(v, tuple):
                out[k] = list(v)
        return out


def build_parser() -> argparse.ArgumentParser:
    """The train command line. Usage errors are one-line InputErrors (`train` exits 2 with
    them; `launch` checks a train command with this parser before anything starts)."""
    p = Parser(
        prog="train",
        description="Distributed GNN trainer; run one per device under torchrun (`launch` does this for you).",
    )
    p.add_argument("--config", metavar="FILE", help="YAML file of train options (the flags given here win)")
    data = p.add_argument_group("graph and cluster")
    data.add_argument("--shards", required=True, type=Path, help="shard folder written by `partition`")
    data.add_argument("--ip-config", required=True, type=Path, help="DGL ip_config.txt of the graph servers")
    data.add_argument("--servers-per-host", type=int, default=1, help="graph servers per host")
    data.add_argument("--samplers", "--num-samplers", dest="samplers", type=int, default=0,
                      help="DGL sampler processes per trainer (0: sample in the trainer, on a prefetch thread)")

    task = p.add_argument_group("task and model")
    task.add_argument("--task", default="node-classification", choices=TASKS,
                      help="node-classification, node-regression (a float 'target' column) or "
                           "link-prediction (shards from partition --link-split)")
    task.add_argument("--model", default="sage",
                      help=f"{', '.join(BUILTIN_MODELS)}, or package.module:factory for your own "
                           "(docs/custom-models.md)")
    task.add_argument("--heads", type=int, default=4, help="attention heads per GAT layer")
    task.add_argument("--hidden", type=int, default=256, help="width of every hidden layer (GAT: all heads)")
    task.add_argument("--dropout", type=float, default=0.5, help="dropout between layers")
    task.add_argument("--feature-norm", default="none", choices=FEATURE_NORMS,
                      help="row: L1-normalise input feature rows (bag-of-words features)")
    task.add_argument("--negatives", type=int, default=4,
                      help="link prediction: uniform negatives per positive edge in training")
    task.add_argument("--scorer", default="dot", choices=SCORERS,
                      help="link prediction: score a pair by the dot product of its embeddings, or an MLP")
    task.add_argument("--node-embedding", type=int, default=0, metavar="DIM",
                      help="learn DIM values per node (DGL DistEmbedding), beside the features or, on a graph "
                           "without them, instead (0: none)")
    task.add_argument("--sparse-optimizer", default="adam", choices=SPARSE_OPTIMIZERS,
                      help="DGL's distributed sparse optimizer for --node-embedding")
    task.add_argument("--sparse-lr", type=float, default=0.01, help="learning rate of the node embeddings")

    sampling = p.add_argument_group("sampling and feature fetch")
    sampling.add_argument("--fanouts", default="10,25",
                          help="neighbours sampled per layer, input layer first (-1: all)")
    sampling.add_argument("--batch-size", type=int, default=1000, help="seed nodes (or edges) per batch and trainer")
    sampling.add_argument("--feature-cache-mb", type=int, default=DEFAULT_FEATURE_CACHE_MB,
                          help="MiB per trainer for the features of the remote nodes sampled most, pulled once at "
                               "start-up (0: off; includes 4 bytes a node of the graph)")
    sampling.add_argument("--prefetch", type=int, default=0,
                          help="batches prepared ahead on a background thread (0: off); helps on hosts with spare cores")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=20, help="passes over the training seeds")
    opt.add_argument("--lr", type=float, default=0.003, help="peak learning rate")
    opt.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                     help="adamw (decoupled weight decay) or adam (L2 weight decay)")
    opt.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    opt.add_argument("--warmup-epochs", type=int, default=1, help="linear warm-up before the cosine decay")
    opt.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine decay ends at this fraction of --lr (1: constant)")
    opt.add_argument("--clip-norm", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    opt.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast type (fp16 needs a GPU)")
    opt.add_argument("--backend", default="auto", choices=BACKENDS,
                     help="torch.distributed backend: auto (gloo on CPU, nccl on GPU), gloo, nccl")
    opt.add_argument("--seed", type=int, default=0, help="same seed, same initial weights and batches")

    ev = p.add_argument_group("evaluation, checkpoints and outputs")
    ev.add_argument("--eval-every", type=int, default=1, help="evaluate on val/test every K epochs")
    ev.add_argument("--eval-fanouts", default=None, help="fanouts for validation/test (default: --fanouts)")
    ev.add_argument("--patience", type=int, default=0,
                    help="early stopping: evaluations without a better validation metric (0: never)")
    ev.add_argument("--checkpoint-dir", type=Path, default=None, help="write a checkpoint after every epoch here")
    ev.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    ev.add_argument("--predict-out", type=Path, default=None, help="write per-node predictions and embeddings (Parquet)")
    ev.add_argument("--predict-only", action="store_true", help="no training: inference from the latest checkpoint")

    mon = p.add_argument_group("logs and metrics")
    mon.add_argument("--run-dir", type=Path, default=None, help="folder for the JSON-lines run log")
    mon.add_argument("--log-every", type=int, default=20, help="a step line every N steps")
    mon.add_argument("--metrics-port", default=str(DEFAULT_METRICS_PORT), help="base /metrics port, 0 disables, 'auto'")
    mon.add_argument("--metrics-addr", default="0.0.0.0", help="address of the /metrics endpoint")
    mon.add_argument("--job-id", default="distgnn", help="the job label of every metric")
    return p


def check_train_args(argv: list[str], *, on_gpu: bool, python_path: str | None = None) -> TrainConfig:
    """The train command as `launch` will run it, checked with the trainer's own parser and
    config: every bad option is an InputError before any process starts. A custom --model is
    imported here too, with the PYTHONPATH the trainers will get."""
    cfg = config_from_args(argv)
    if cfg.model not in BUILTIN_MODELS:
        from distgnn.trainer.custom import load_factory

        load_factory(cfg.model, python_path)
    if cfg.precision == "fp16" and not on_gpu:
        raise InputError("--precision fp16 needs a GPU (launch with --gpus-per-host N), or use bf16 or fp32")
    return cfg


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """The only place that turns command-line arguments (and a --config file) into a TrainConfig."""
    from distgnn import configfile

    parser = build_parser()
    ns = parser.parse_args(configfile.expand(list(sys.argv[1:] if argv is None else argv), parser))
    return TrainConfig(
        shards=ns.shards,
        ip_config=ns.ip_config,
        servers_per_host=ns.servers_per_host,
        samplers=ns.samplers,
        fanouts=parse_fanouts(ns.fanouts),
        eval_fanouts=None if ns.eval_fanouts is None else parse_fanouts(ns.eval_fanouts),
        batch_size=ns.batch_size,
        prefetch=ns.prefetch,
        feature_cache_mb=ns.feature_cache_mb,
        hidden=ns.hidden,
        model=ns.model,
        node_embedding=ns.node_embedding,
        sparse_optimizer=ns.sparse_optimizer,
        sparse_lr=ns.sparse_lr,
        task=ns.task,
        negatives=ns.negatives,
        scorer=ns.scorer,
        heads=ns.heads,
        dropout=ns.dropout,
        epochs=ns.epochs,
        lr=ns.lr,
        weight_decay=ns.weight_decay,
        optimizer=ns.optimizer,
        feature_norm=ns.feature_norm,
        warmup_epochs=ns.warmup_epochs,
        min_lr_ratio=ns.min_lr_ratio,
        clip_norm=ns.clip_norm,
        eval_every=ns.eval_every,
        patience=ns.patience,
        precision=ns.precision,
        backend=ns.backend,
        seed=ns.seed,
        checkpoint_dir=ns.checkpoint_dir,
        resume=ns.resume,
        predict_out=ns.predict_out,
        predict_only=ns.predict_only,
        run_dir=ns.run_dir,
        log_every=ns.log_every,
        metrics_port=parse_metrics_port(ns.metrics_port),
        metrics_addr=ns.metrics_addr,
        job_id=ns.job_id,
    )
