"""The training loop: epochs of DDP steps, evaluation, early stopping, checkpoints, run log.

The loop talks to monitoring only through `metrics` (a sink that may do nothing) and to the
run log through `log`; it never asks whether either is switched on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from distgnn import heartbeat
from distgnn.errors import InputError, RunFailure
from distgnn.metrics import PHASES as METRIC_PHASES
from distgnn.partition import shards
from distgnn.trainer import checkpoint as ckpt
from distgnn.trainer import linkpred, local_sampling, regression
from distgnn.trainer import step as steps
from distgnn.trainer.cluster import Cluster, GraphFacts, split_nodes
from distgnn.trainer.config import TrainConfig
from distgnn.trainer.features import FeatureCache, build_cache, rows_within
from distgnn.trainer.inputs import NodeInputs
from distgnn.trainer.model import ModelConfig, build_model
from distgnn.trainer.sampling import LayerSampler, PartLocality, iterate_batches, make_loader, prefetched

PHASES = (*METRIC_PHASES, "wait")
"""Where a step's time goes. With prefetching, sample and fetch run on a background thread and
overlap the others; the step's wall time is then wait (for the batch) + forward + backward +
optimizer."""


@dataclass
class Progress:
    """What survives an epoch and goes into a checkpoint besides the torch states."""

    epoch: int = -1
    """Last completed epoch."""
    best_val: float = -math.inf
    """The validation metric of the best evaluation (higher is better; R² may be below -1)."""
    best_test: float = -math.inf
    best_epoch: int = -1
    evals_without_improvement: int = 0
    best_model: dict | None = None
    best_scores: dict | None = None
    """Link prediction and regression: every metric of the best evaluation."""
    history: list[dict] = field(default_factory=list)


LINK = "link-prediction"
REGRESSION = "node-regression"


def model_config(cfg: TrainConfig, facts: GraphFacts) -> ModelConfig:
    """The node model a run trains. For link prediction its output is the node embedding,
    --hidden wide."""
    outputs = {LINK: cfg.hidden, REGRESSION: 1}.get(cfg.task, facts.num_classes)
    return ModelConfig(
        in_dim=facts.feat_dim + cfg.node_embedding, hidden=cfg.hidden, num_classes=outputs, num_layers=cfg.num_layers,
        dropout=float(cfg.dropout), feature_norm=cfg.feature_norm, model=cfg.model, heads=cfg.heads,
    )


def checkpoint_config(cfg: TrainConfig, facts: GraphFacts) -> dict:
    """What a checkpoint records of the model and a resume must match: the node model, the
    task, and the link scorer."""
    out = {**dataclasses.asdict(model_config(cfg, facts)), "task": cfg.task, "node_embedding": cfg.node_embedding}
    if cfg.task == LINK:
        out["scorer"] = cfg.scorer
    return out


@dataclass
class Trainer:
    cfg: TrainConfig
    facts: GraphFacts
    cluster: Cluster
    metrics: object
    log: object
    model: torch.nn.Module = field(init=False)

    def __post_init__(self) -> None:
        c = self.cluster
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        self.model_config = model_config(self.cfg, self.facts)
        self.checkpoint_config = checkpoint_config(self.cfg, self.facts)
        self.model = build_model(self.model_config).to(c.device)
        self.inputs = NodeInputs(c.g, feat_dim=self.facts.feat_dim, embedding_dim=self.cfg.node_embedding,
                                 name=f"{self.cfg.job_id}_node_embedding")
        self.link = self.cfg.task == LINK
        self.regression = self.cfg.task == REGRESSION
        if self.link and not hasattr(self.model, "forward_layer"):
            raise InputError(f"--model {self.cfg.model}: link prediction embeds every node layer by layer to "
                             "evaluate, so the model needs forward_layer (docs/custom-models.md)")
        # what is trained: the node model, or for link prediction the node model and its scorer
        self.net = (linkpred.LinkModel(self.model, linkpred.Scorer(self.cfg.scorer, self.cfg.hidden)).to(c.device)
                    if self.link else self.model)
        torch.manual_seed(self.cfg.seed * 1000 + c.rank)  # per-rank dropout and shuffling
        self.precision = steps.Precision.parse(self.cfg.precision, c.device)
        self.ddp = steps.wrap_ddp(self.net, c.device)
        self.optimizer = steps.make_optimizer(self.net, self.cfg.lr, self.cfg.weight_decay, self.cfg.optimizer)
        self.sparse_optimizer = self.inputs.make_optimizer(self.cfg.sparse_optimizer, self.cfg.sparse_lr)
        self.scaler = steps.make_grad_scaler(self.precision, c.device)
        self.locality = PartLocality(c.g)
        if not local_sampling.install(c.g.local_partition, c.g.get_partition_book()):
            self.log.message("part-local sampling: DGL's own id translation (the part graph is not in "
                             "distgnn's layout, or DGL's sampling internals differ from 2.1's)")
        if self.link:
            self.train_eids = linkpred.my_edges(c.g)
            self.sampler = LayerSampler(self.cfg.fanouts, int(c.g.num_nodes()))
            self.held_out = {split: shards.read_link_pairs(self.cfg.shards, split) for split in ("val", "test")}
            local_steps = math.ceil(len(self.train_eids) / self.cfg.batch_size)
        else:
            self.train_nids, self.val_nids, self.test_nids = (
                split_nodes(c.g, f"{split}_mask") for split in ("train", "val", "test"))
            if self.regression:  # a node without a target (NaN) is in no split
                self.train_nids, self.val_nids, self.test_nids = (
                    regression.with_targets(c.g, n) for n in (self.train_nids, self.val_nids, self.test_nids))
            self.train_loader = make_loader(c.g, self.train_nids, self.cfg.fanouts, self.cfg.batch_size, shuffle=True)
            local_steps = math.ceil(len(self.train_nids) / self.cfg.batch_size)
        self.evaluations = 0
        # force_even splits make the counts equal already; agreeing on the minimum keeps DDP safe anyway.
        self.steps_per_epoch = steps.agree_num_steps(local_steps)
        total = max(1, self.steps_per_epoch * self.cfg.epochs)
        warmup = min(total - 1, self.steps_per_epoch * self.cfg.warmup_epochs)
        self.scheduler = steps.warmup_cosine(self.optimizer, warmup, total, self.cfg.min_lr_ratio)
        self.progress = Progress()
        self.feat_bytes = self.facts.feat_dim * 4
        self.cache = self._build_cache()
        self.metrics.info(self.cfg.to_json())

    def _build_cache(self) -> FeatureCache | None:
        if self.cfg.feature_cache_mb <= 0 or self.facts.num_parts == 1 or not self.facts.feat_dim:
            return None  # one part: no remote node to cache; no features: nothing to cache
        c = self.cluster
        t0 = time.perf_counter()
        budget = self.cfg.feature_cache_mb * 2**20
        own = (self.locality.lo, self.locality.hi)
        cache = build_cache(c.g, c.g.ndata["feat"], budget, self.facts.feat_dim, own)
        if cache.size == 0:
            table_mb = cache.slot.numel() * 4 / 2**20
            why = (f"its slot table alone ({table_mb:.0f} MiB) fills --feature-cache-mb {self.cfg.feature_cache_mb}"
                   if rows_within(budget, cache.slot.numel(), self.facts.feat_dim) == 0
                   else "no remote node is sampled from this part")
            self.log.message(f"feature cache off: {why}")
            return None
        self.log.message(f"feature cache: {cache.size} remote nodes' rows, {cache.nbytes / 2**20:.0f} MiB, "
                         f"filled in {time.perf_counter() - t0:.1f} s; room for {cache.capacity - cache.size} "
                         f"more rows, kept as batches fetch them")
        return cache

    # -- checkpoints -------------------------------------------------------------------------

    def resume(self, path) -> None:
        """Continue from a checkpoint that `run.check_checkpoint` found and vetted."""
        flag = "--resume" if self.cfg.resume else "--predict-only"
        state = ckpt.load_checkpoint(path, model_config=self.checkpoint_config, flag=flag)
        progress = ckpt.apply_state(
            state, model=self.net, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            rank=self.cluster.rank,
        )
        self.progress = Progress(**progress)
        if self.inputs.embedding is not None:
            if self.cluster.rank == 0:  # one writer; everyone else waits until the rows are back
                self.inputs.load(state["node_embedding"])
            dist.barrier()
        what = "resumed" if self.cfg.resume else "predicting"
        self.log.message(f"{what} from epoch {state['epoch']} ({path.name})")

    def save(self) -> None:
        if self.cfg.checkpoint_dir is None:  # the same on every rank: no one enters the gather
            return
        # Every rank's RNG state travels to rank 0 so a resumed run continues each rank's stream.
        rngs = [None] * self.cluster.world_size
        dist.all_gather_object(rngs, ckpt.capture_rng_state())
        # The learned node embeddings travel with the network: rank 0 reads every row while
        # the others wait, so no update of the next epoch slips into the copy.
        embedding = self.inputs.state() if self.cluster.rank == 0 else None
        if self.inputs.embedding is not None:
            dist.barrier()
        if self.cluster.rank != 0:
            return
        state = ckpt.make_state(
            model=self.net, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            model_config=self.checkpoint_config, train_config=self.cfg.to_json(),
            progress=dataclasses.asdict(self.progress), rng=rngs,
        )
        if embedding is not None:
            state["node_embedding"] = embedding
        try:
            ckpt.save_checkpoint(self.cfg.checkpoint_dir, self.progress.epoch, state)
        except OSError as err:  # a full or read-only disk: say so in one line, as the first failure
            where = err.filename or self.cfg.checkpoint_dir
            raise RunFailure(f"cannot write checkpoint of epoch {self.progress.epoch} to {where}: "
                             f"{err.strerror or err}") from None

    # -- training ----------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        self.ddp.train()
        c = self.cluster
        if self.link:
            source = linkpred.edge_batches(
                c.g, self.sampler, self.train_eids, batch_size=self.cfg.batch_size, negatives=self.cfg.negatives,
                shuffle=True, locality=self.locality, feat_bytes_per_node=self.feat_bytes, cache=self.cache)
        else:
            source = iterate_batches(c.g, self.train_loader, self.locality, feat_bytes_per_node=self.feat_bytes,
                                     cache=self.cache, target=self.regression)
        batches = prefetched(source, self.cfg.prefetch)
        totals = dict.fromkeys(PHASES, 0.0)
        loss_sum, seen, n = 0.0, 0, 0
        t_epoch = t_step = time.perf_counter()
        for i, batch in enumerate(batches):
            if i >= self.steps_per_epoch:
                break  # never more steps than the slowest rank: DDP would wait forever
            layers, x, y = steps.move_batch(batch.layers, batch.x, batch.y, c.device)
            x = self.inputs.complete(x, batch.input_nodes, c.device)
            extra, loss_fn, count = (), None, len(batch.seeds)
            if self.link:
                extra = tuple(rows.to(c.device) for rows in batch.pairs)
                loss_fn, count = linkpred.link_loss, int(batch.y.sum())  # positive edges
            elif self.regression:
                loss_fn = regression.regression_loss
            result = steps.train_step(
                self.ddp, self.optimizer, self.scaler, layers, x, y,
                precision=self.precision, clip_norm=self.cfg.clip_norm, extra=extra, loss_fn=loss_fn,
            )
            if self.sparse_optimizer is not None:
                # DGL's sparse optimizers drop the recorded lookups only inside a step that
                # follows zero_grad(); without it every step would apply all earlier batches'
                # gradients again (and keep them in memory).
                self.sparse_optimizer.zero_grad()
                self.sparse_optimizer.step()  # the embedding rows this batch used
            self.scheduler.step()
            heartbeat.tick()
            t = result.timings
            phases = {**batch.timings, "forward": t.forward_s, "backward": t.backward_s, "optimizer": t.optimizer_s}
            for k in PHASES:
                totals[k] += phases.get(k, 0.0)
            n += 1
            seen += count
            loss_sum += result.loss
            now = time.perf_counter()
            self.metrics.step(
                phases={k: v for k, v in phases.items() if k in METRIC_PHASES},
                seconds=now - t_step,
                seeds=count,
                sampled_edges=batch.sampled_edges,
                remote_bytes=batch.remote_bytes,
                loss=result.loss,
                lr=self.scheduler.get_last_lr()[0],
                grad_norm=result.grad_norm,
                loss_scale=result.loss_scale,
            )
            if self.cfg.log_every and n % self.cfg.log_every == 0:
                self.log.step(epoch=epoch, step=n, loss=result.loss, seeds=seen, seconds=now - t_epoch)
            t_step = time.perf_counter()
        seconds = time.perf_counter() - t_epoch
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"epoch {epoch}: training loss is not finite ({loss_sum})")
        return {
            "loss": loss_sum / max(n, 1),
            "seeds": seen,
            "steps": n,
            "seconds": seconds,
            "seeds_per_s": seen / seconds if seconds > 0 else 0.0,
            "phases": totals,
        }

    @torch.no_grad()
    def accuracy(self, nids: torch.Tensor) -> float:
        """Accuracy over every trainer's share of `nids`, reduced across ranks."""
        c = self.cluster
        self.model.eval()
        fanouts = self.cfg.eval_fanouts or self.cfg.fanouts
        loader = make_loader(c.g, nids, fanouts, self.cfg.batch_size, shuffle=False)
        counts = torch.zeros(2, dtype=torch.float64)
        for batch in iterate_batches(c.g, loader, self.locality, feat_bytes_per_node=self.feat_bytes,
                                     cache=self.cache):
            layers, x, y = steps.move_batch(batch.layers, batch.x, batch.y, c.device)
            x = self.inputs.complete(x, batch.input_nodes, c.device)
            correct, total = steps.evaluate_batch(self.model, layers, x, y, precision=self.precision)
            counts += torch.tensor([correct, total], dtype=torch.float64)
            heartbeat.tick()
        dist.all_reduce(counts)
        return float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")

    def link_scores(self) -> dict[str, dict[str, float]]:
        """Every metric of the validation and test pairs, the same on every rank."""
        from distgnn.trainer import inference

        c = self.cluster
        self.evaluations += 1
        outputs = inference.layerwise_outputs(c, self.model, self.model_config, self.inputs,
                                              batch_size=self.cfg.batch_size,
                                              name=f"{self.cfg.job_id}_lp{self.evaluations}")
        embeddings, scores = outputs[-1], {}
        for split, (src, dst, neg) in self.held_out.items():
            mine = linkpred.shares(src.size, c.rank, c.world_size)
            pos, negs = linkpred.score_pairs(embeddings, self.net.scorer, src[mine], dst[mine], neg[mine], c.device)
            gathered = [None] * c.world_size
            dist.all_gather_object(gathered, (pos, negs))
            scores[split] = linkpred.link_metrics(np.concatenate([g[0] for g in gathered]),
                                                  np.concatenate([g[1] for g in gathered]))
            heartbeat.tick()
        del outputs, embeddings
        self.model.train()
        return scores

    @torch.no_grad()
    def regression_scores(self) -> dict[str, dict[str, float]]:
        """MSE, MAE and R² of the validation and test nodes, reduced over every rank."""
        c = self.cluster
        fanouts = self.cfg.eval_fanouts or self.cfg.fanouts
        scores = {}
        for split, nids in (("val", self.val_nids), ("test", self.test_nids)):
            loader = make_loader(c.g, nids, fanouts, self.cfg.batch_size, shuffle=False)
            sums = torch.zeros(5, dtype=torch.float64)
            for batch in iterate_batches(c.g, loader, self.locality, feat_bytes_per_node=self.feat_bytes,
                                         cache=self.cache, target=True):
                layers, x, y = steps.move_batch(batch.layers, batch.x, batch.y, c.device)
                x = self.inputs.complete(x, batch.input_nodes, c.device)
                sums += regression.batch_sums(self.model, layers, x, y, self.precision)
                heartbeat.tick()
            dist.all_reduce(sums)
            scores[split] = regression.metrics(sums)
        return scores

    def evaluate(self, epoch: int) -> dict:
        scores, metric = None, self.val_metric
        if self.link or self.regression:
            scores = self.link_scores() if self.link else self.regression_scores()
            val, test = scores["val"][metric], scores["test"][metric]
        else:
            val = self.accuracy(self.val_nids)
            test = self.accuracy(self.test_nids)
        p = self.progress
        if val > p.best_val:
            p.best_val, p.best_test, p.best_epoch = val, test, epoch
            p.evals_without_improvement = 0
            p.best_model = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            p.best_scores = scores
        else:
            p.evals_without_improvement += 1
        out = {"val_acc": val, "test_acc": test}
        if scores is not None:
            out.update(metric=metric, scores=scores)
        return out

    @property
    def val_metric(self) -> str:
        """What early stopping and the best checkpoint follow (higher is better)."""
        if self.link:
            return linkpred.VAL_METRIC
        return regression.VAL_METRIC if self.regression else "accuracy"

    def fit(self) -> Progress:
        cfg = self.cfg
        for epoch in range(self.progress.epoch + 1, cfg.epochs):
            stats = self.train_epoch(epoch)
            last = epoch == cfg.epochs - 1
            if (epoch + 1) % cfg.eval_every == 0 or last:
                stats.update(self.evaluate(epoch))
            self.progress.epoch = epoch
            record = {"epoch": epoch, **stats, "lr": self.scheduler.get_last_lr()[0]}
            self.progress.history.append({k: v for k, v in record.items() if k != "phases"})
            scores = stats.get("scores")
            self.metrics.epoch_end(epoch=epoch, seconds=stats["seconds"], accuracies={} if scores else {
                k.removesuffix("_acc"): v for k, v in stats.items() if k.endswith("_acc")
            })
            # every task's scores under one metric name, so one panel follows any task
            evaluated = scores or {k.removesuffix("_acc"): {"accuracy": v} for k, v in stats.items() if k.endswith("_acc")}
            if evaluated:
                self.metrics.eval_scores(evaluated)
            if self.cluster.device.type == "cuda":
                self.metrics.gpu_memory(torch.cuda.max_memory_allocated(self.cluster.device))
            self.log.epoch(**record)
            self.save()
            if cfg.patience and self.progress.evals_without_improvement >= cfg.patience:
                metric = self.val_metric
                self.log.message(f"early stop after epoch {epoch}: val {metric} has not improved for "
                                 f"{cfg.patience} evaluations (best {self.progress.best_val:.4f} at epoch "
                                 f"{self.progress.best_epoch})")
                break
        return self.progress

    def param_digest(self) -> str:
        """sha256 of the trained parameters: equal on every rank when DDP kept them in sync."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.net.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def use_best_model(self) -> None:
        if self.inputs.embedding is not None:
            # the network of the best epoch would meet the embeddings of the last: keep both as trained
            self.log.message("--node-embedding: predicting with the last epoch's network and embeddings")
            return
        if self.progress.best_model is not None:
            self.net.load_state_dict(self.progress.best_model)
