"""One trainer's whole run: check, connect, train, evaluate, predict."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist

from distgnn.errors import InputError
from distgnn.trainer.cluster import check_inputs, connect, host_index, pick_device
from distgnn.trainer.config import TrainConfig
from distgnn.trainer.step import Precision


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_checkpoint(cfg: TrainConfig, facts) -> Path:
    """The checkpoint to resume from; a missing or incompatible one is refused before
    connecting to anything."""
    from distgnn.runlog import write_line
    from distgnn.trainer.checkpoint import intact_checkpoint, load_checkpoint
    from distgnn.trainer.loop import checkpoint_config

    flag = "--resume" if cfg.resume else "--predict-only"
    path, damaged = intact_checkpoint(cfg.checkpoint_dir)
    if path is None:
        why = f" (damaged: {'; '.join(damaged)})" if damaged else ""
        raise InputError(f"{flag}: no complete checkpoint in {cfg.checkpoint_dir}{why}")
    if damaged:
        write_line(sys.stderr, f"train: {flag}: passing over {'; '.join(damaged)}; using {path.name}")
    load_checkpoint(path, model_config=checkpoint_config(cfg, facts), flag=flag)
    return path


def run(cfg: TrainConfig) -> None:
    from distgnn import metrics, runlog

    facts = check_inputs(cfg, _world_size())
    from distgnn import heartbeat

    heartbeat.start("trainer", int(os.environ.get("RANK", "0")))  # from here on, silence means a hang
    device, _ = pick_device(cfg.backend)
    Precision.parse(cfg.precision, device)  # fp16 on CPU fails here, before any connection
    resume_from = check_checkpoint(cfg, facts) if (cfg.resume or cfg.predict_only) else None

    cluster = connect(cfg, facts)
    host = facts.hosts[host_index()]
    sink = metrics.trainer_metrics(
        cfg.metrics_port, cfg.metrics_addr, job=cfg.job_id, host=host, rank=cluster.rank,
        local_rank=cluster.local_rank, servers_per_host=cfg.servers_per_host, part=host_index(),
    )
    log = runlog.open_run_log(cfg.run_dir, rank=cluster.rank, echo=cluster.rank == 0, host=host, job_id=cfg.job_id)
    try:
        train_and_predict(cfg, facts, cluster, sink, log, resume_from)
    finally:
        sink.close()
        log.close()


def train_and_predict(cfg: TrainConfig, facts, cluster, sink, log, resume_from: Path | None) -> None:
    from distgnn.trainer import inference
    from distgnn.trainer.loop import Trainer

    trainer = Trainer(cfg=cfg, facts=facts, cluster=cluster, metrics=sink, log=log)
    if resume_from is not None:
        trainer.resume(resume_from)
    if not cfg.predict_only:
        progress = trainer.fit()
        extra = {"metric": trainer.val_metric, "scores": progress.best_scores} if progress.best_scores else {}
        log.summary(
            best_epoch=progress.best_epoch, best_val_acc=progress.best_val, test_acc=progress.best_test,
            epochs=progress.epoch + 1, param_digest=trainer.param_digest(), **extra,
        )
    trainer.use_best_model()
    if cfg.predict_out is not None:
        result = inference.infer(cluster, trainer.model, trainer.model_config, trainer.inputs,
                                 batch_size=cfg.batch_size, job_id=cfg.job_id)
        if trainer.inputs.embedding is not None:
            result["inputs"] = trainer.inputs.embedding.weight[result["nodes"]].numpy()
        if trainer.link:
            path = inference.write_embeddings(cluster, result, cfg.predict_out)
            log.message(f"node embeddings written to {path}")
        elif trainer.regression:
            path = inference.write_regression(cluster, result, cfg.predict_out)
            log.message(f"predictions written to {path}")
        else:
            path = inference.write_predictions(cluster, result, cfg.predict_out)
            log.message(f"predictions written to {path}")
    dist.barrier()
