"""Layer-wise full-neighbour inference over the whole distributed graph.

Sampled inference would give every node a different random neighbourhood per call; computing
layer by layer over all in-neighbours gives each node exactly one, deterministic answer and
costs one pass over the edges per layer. Each layer's output for every node lives in a
DistTensor, so a trainer reads its neighbours' previous-layer values wherever they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from distgnn import heartbeat, predictions
from distgnn.trainer.cluster import Cluster
from distgnn.trainer.model import ModelConfig
from distgnn.trainer.sampling import make_loader
from distgnn.trainer.split import my_share


def _my_nodes(g) -> torch.Tensor:
    everything = torch.ones(g.num_nodes(), dtype=torch.bool)
    return my_share(everything, g.num_nodes(), g.get_partition_book(), "node")


def infer(cluster: Cluster, model: torch.nn.Module, model_cfg: ModelConfig, inputs, *, batch_size: int,
          job_id: str) -> dict:
    """Layer by layer when the model can run one layer alone (`forward_layer`), else over each
    node's whole neighbourhood (a custom model without it). `inputs[ids]`: input rows."""
    if hasattr(model, "forward_layer"):
        return layerwise_inference(cluster, model, model_cfg, inputs, batch_size=batch_size, job_id=job_id)
    return neighbourhood_inference(cluster, model, model_cfg, inputs, batch_size=batch_size)


@torch.no_grad()
def neighbourhood_inference(cluster: Cluster, model: torch.nn.Module, model_cfg: ModelConfig, inputs, *,
                            batch_size: int) -> dict:
    """Each node's output from all of its neighbours, num_layers hops deep, in batches of seeds:
    as deterministic as layer-wise inference, but a node's neighbourhood is recomputed for
    every batch that needs it. The output doubles as the embedding."""
    g = cluster.g
    model.eval()
    nodes = _my_nodes(g)
    loader = make_loader(g, nodes, (-1,) * model_cfg.num_layers, batch_size, shuffle=False)
    logits = torch.empty(len(nodes), model_cfg.num_classes)
    where = torch.empty(g.num_nodes(), dtype=torch.int64)
    where[nodes] = torch.arange(len(nodes))
    for input_nodes, seeds, sampled in loader:
        layers = [s.graph.to(cluster.device) for s in sampled]
        logits[where[seeds]] = model(layers, inputs[input_nodes].to(cluster.device)).float().cpu()
        heartbeat.tick()
    return {"nodes": nodes, "logits": logits, "embeddings": logits}


@torch.no_grad()
def layerwise_inference(cluster: Cluster, model: torch.nn.Module, model_cfg: ModelConfig, inputs, *,
                        batch_size: int, job_id: str) -> dict:
    """Returns this rank's node ids with logits and the last hidden layer's embeddings."""
    nodes = _my_nodes(cluster.g)
    outputs = layerwise_outputs(cluster, model, model_cfg, inputs, batch_size=batch_size, name=f"{job_id}_infer")
    logits = outputs[-1][nodes]
    embeddings = outputs[-2][nodes] if len(outputs) > 1 else logits
    return {"nodes": nodes, "logits": logits, "embeddings": embeddings}


@torch.no_grad()
def layerwise_outputs(cluster: Cluster, model: torch.nn.Module, model_cfg: ModelConfig, inputs, *,
                      batch_size: int, name: str) -> list:
    """Every layer's output for every node, one DistTensor per layer (`name`_i; every rank
    calls this together, and drops the tensors together: DGL deletes them collectively)."""
    import dgl

    g = cluster.g
    was_training = model.training
    model.eval()
    nodes = _my_nodes(g)
    h_in = inputs
    outputs = []
    for i, (_, out_dim) in enumerate(model_cfg.layer_dims()):
        h_out = dgl.distributed.DistTensor(
            (g.num_nodes(), out_dim), torch.float32, name=f"{name}_{i}", persistent=False
        )
        # fanout -1: every in-neighbour, one layer at a time.
        loader = make_loader(g, nodes, (-1,), batch_size, shuffle=False)
        for input_nodes, seeds, sampled in loader:
            layer = sampled[0].graph.to(cluster.device)
            h = h_in[input_nodes].to(cluster.device)
            h_out[seeds] = model.forward_layer(i, layer, h).float().cpu()
            heartbeat.tick()
        # Every rank must have written its nodes before anyone reads them as the next layer's input.
        dist.barrier()
        g.barrier()
        outputs.append(h_out)
        h_in = h_out
    model.train(was_training)
    return outputs


def write_embeddings(cluster: Cluster, result: dict, out_dir: Path) -> Path:
    """Link prediction: every node's embedding (the encoder's output) with its original id."""
    orig_ids = cluster.g.ndata["orig_id"][result["nodes"]]
    return predictions.write_embeddings(out_dir, rank=cluster.rank, orig_id=orig_ids.numpy(),
                                        embedding=result["logits"].numpy(), node_embedding=result.get("inputs"))


def write_regression(cluster: Cluster, result: dict, out_dir: Path) -> Path:
    """Node regression: every node's predicted value and last hidden layer."""
    orig_ids = cluster.g.ndata["orig_id"][result["nodes"]]
    return predictions.write_values(out_dir, rank=cluster.rank, orig_id=orig_ids.numpy(),
                                    pred=result["logits"][:, 0].numpy(), embedding=result["embeddings"].numpy(),
                                    node_embedding=result.get("inputs"))


def write_predictions(cluster: Cluster, result: dict, out_dir: Path) -> Path:
    g = cluster.g
    orig_ids = g.ndata["orig_id"][result["nodes"]]
    probs = torch.softmax(result["logits"], dim=1)
    return predictions.write_rank(
        out_dir,
        rank=cluster.rank,
        orig_id=orig_ids.numpy(),
        pred=probs.argmax(dim=1).numpy(),
        probs=probs.numpy(),
        embedding=result["embeddings"].numpy(),
        node_embedding=result.get("inputs"),
    )
