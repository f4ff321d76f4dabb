"""One training step of our GraphSAGE against two dgl.nn.SAGEConv layers (not a test).

Same random block of realistic size (1000 seeds, fanouts 10,25, 64-d features, hidden 256),
same optimiser, one CPU thread, alternating runs. Ours includes building each layer's sparse
mean-aggregation matrix, which the trainer does on the sampling side.

    python bench/model_step.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import dgl

    from baseline_dgl_sage import DGLSage
    from distgnn.trainer.model import GraphSAGE, LayerGraph

    torch.set_num_threads(1)
    torch.manual_seed(0)
    seeds, mid, inputs, classes = 1000, 24373, 148257, 16
    s1, d1 = torch.randint(0, inputs, (243730,)), torch.sort(torch.randint(0, mid, (243730,))).values
    s2, d2 = torch.randint(0, mid, (25000,)), torch.sort(torch.randint(0, seeds, (25000,))).values
    x, y = torch.randn(inputs, 64), torch.randint(0, classes, (seeds,))
    blocks = [dgl.create_block((s1, d1), num_src_nodes=inputs, num_dst_nodes=mid),
              dgl.create_block((s2, d2), num_src_nodes=mid, num_dst_nodes=seeds)]
    ours, base = GraphSAGE(64, 256, classes, 2, 0.5), DGLSage(64, 256, classes, 2, 0.5)
    opt_ours, opt_base = torch.optim.Adam(ours.parameters(), 0.003), torch.optim.Adam(base.parameters(), 0.003)

    def step_ours() -> None:
        layers = [LayerGraph(s1, d1, inputs, mid).with_mean_matrix(), LayerGraph(s2, d2, mid, seeds).with_mean_matrix()]
        loss = F.cross_entropy(ours(layers, x), y)
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    def step_base() -> None:
        loss = F.cross_entropy(base(blocks, x), y)
        opt_base.zero_grad()
        loss.backward()
        opt_base.step()

    times: dict[str, list[float]] = {"distgnn GraphSAGE": [], "dgl.nn.SAGEConv": []}
    for _ in range(3):
        for name, step in (("distgnn GraphSAGE", step_ours), ("dgl.nn.SAGEConv", step_base)):
            step()
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            times[name].append((time.perf_counter() - t0) / 3)
    for name, ts in times.items():
        print(f"{name:20} {1000 * min(ts):7.0f} ms/step (best of {len(ts)} rounds of 3)")
    ours_ms, base_ms = (min(ts) for ts in times.values())
    print(f"ratio (baseline / ours): x{base_ms / ours_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
