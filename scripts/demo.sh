#!/usr/bin/env bash
# `make demo`: partition the bundled PubMed graph, start a one-host cluster (one graph server,
# two trainers under torchrun), train GraphSAGE, evaluate, write predictions, print test accuracy.
set -euo pipefail
out=${1:-runs/demo}
bin=.venv/bin
rm -rf "$out"
mkdir -p "$out"
echo "== partition: data/pubmed -> $out/shards (1 part: one host)"
"$bin/partition" --graph data/pubmed --num-parts 1 --out "$out/shards"
printf '127.0.0.1 %s\n' "${DEMO_SERVER_PORT:-30050}" > "$out/ip_config.txt"
echo "== launch: 1 host x (1 graph server + 2 trainers)"
"$bin/launch" --hosts "$out/ip_config.txt" --shards "$out/shards" --trainers-per-host 2 \
  --workspace "$out" --job-id demo --metrics-linger 0 -- \
  train --fanouts 10,25 --eval-fanouts=-1,-1 --batch-size 32 --hidden 128 --dropout 0.5 --lr 0.01 \
        --optimizer adam --weight-decay 5e-4 --feature-norm row --epochs 200 --eval-every 5 \
        --patience 12 --checkpoint-dir "$out/checkpoints" --predict-out "$out/predictions"
echo "== predictions: $out/predictions"
"$bin/python" - "$out/predictions" <<'PY'
import sys
from distgnn import predictions
t = predictions.read_all(sys.argv[1])
print(f"{t.num_rows} nodes predicted; first rows:")
print(t.select(["node_id", "pred"]).slice(0, 5).to_pandas().to_string(index=False))
PY
