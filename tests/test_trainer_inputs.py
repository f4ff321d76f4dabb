"""Bad input to `train` and to the graph server: one line, exit code 2, before anything connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distgnn.trainer.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "pubmed1"
    subprocess.run(
        [BIN / "partition", "--graph", REPO / "data" / "pubmed", "--num-parts", "1", "--out", out, "--quiet"],
        check=True, timeout=120,
    )
    return out


@pytest.fixture()
def ip1(tmp_path) -> Path:
    path = tmp_path / "ip_config.txt"
    path.write_text("127.0.0.1 39999\n")
    return path


def run_train(args: list, *, world_size: int = 1, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_SIZE": str(world_size), "RANK": "0", "LOCAL_RANK": "0",
           "DGL_DIST_MAX_TRY_TIMES": "1"}
    return subprocess.run([BIN / "train", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train: error: ") or lines[0].startswith("distgnn-server: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("fanouts", ["10,x", "", "10,,25", "0,5", "-3"])
def test_malformed_fanouts(shards, ip1, fanouts):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--fanouts", fanouts])
    assert_one_line_error(proc, "--fanouts")


@pytest.mark.parametrize("args, needle", [
    (["--epochs", "0"], "--epochs 0"), (["--bogus", "3"], "unrecognized arguments: --bogus"),
    (["--hidden", "many"], "--hidden"),
])
def test_usage_errors_are_one_line_and_exit_2(shards, ip1, args, needle):
    proc = run_train(["--shards", shards, "--ip-config", ip1, *args])
    assert_one_line_error(proc, needle)


def test_batch_size_below_one(shards, ip1):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--batch-size", "0"])
    assert_one_line_error(proc, "--batch-size")


def test_unknown_precision(shards, ip1):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--precision", "fp8"])
    assert_one_line_error(proc, "--precision", "fp8")


def test_fp16_on_cpu(shards, ip1):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--precision", "fp16"])
    assert_one_line_error(proc, "--precision fp16", "CUDA")


def test_resume_without_checkpoint(shards, ip1, tmp_path):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--resume", "--checkpoint-dir", tmp_path / "ck"])
    assert_one_line_error(proc, "--resume", "no complete checkpoint")


def test_resume_with_only_a_damaged_checkpoint(shards, ip1, tmp_path):
    ckdir = tmp_path / "ck"
    path = save_checkpoint(ckdir, 0, {"model_config": {}, "model": {}})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--resume", "--checkpoint-dir", ckdir])
    assert_one_line_error(proc, "--resume", "no complete checkpoint", "epoch-00000.pt: its sha256 does not match")


def test_resume_from_other_model_config(shards, ip1, tmp_path):
    ckdir = tmp_path / "ck"
    other = {"in_dim": 500, "hidden": 16, "num_classes": 3, "num_layers": 2, "dropout": 0.5}
    save_checkpoint(ckdir, 0, {"model_config": other, "model": {}})
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--resume", "--checkpoint-dir", ckdir,
                      "--hidden", "32"])
    assert_one_line_error(proc, "--resume", "hidden")


def test_ip_config_host_count_differs_from_parts(shards, tmp_path):
    ip2 = tmp_path / "ip2.txt"
    ip2.write_text("127.0.0.1 39998\n127.0.0.2 39998\n")
    proc = run_train(["--shards", shards, "--ip-config", ip2])
    assert_one_line_error(proc, str(ip2), "2 hosts", "1 parts")


def test_more_trainers_than_training_nodes(tmp_path, ip1):
    # Cora's bundled copy has no masks: give it a split with 3 training nodes.
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = REPO / "data" / "cora"
    graph = tmp_path / "cora3"
    graph.mkdir()
    (graph / "edges.parquet").write_bytes((src / "edges.parquet").read_bytes())
    nodes = pq.read_table(src / "nodes.parquet")
    for name, (lo, hi) in (("train_mask", (0, 3)), ("val_mask", (3, 100)), ("test_mask", (100, 200))):
        nodes = nodes.append_column(name, pa.array([lo <= i < hi for i in range(nodes.num_rows)]))
    pq.write_table(nodes, graph / "nodes.parquet")
    shards = tmp_path / "shards"
    subprocess.run([BIN / "partition", "--graph", graph, "--num-parts", "1", "--out", shards, "--quiet"],
                   check=True, timeout=120)
    proc = run_train(["--shards", shards, "--ip-config", ip1], world_size=4)
    assert_one_line_error(proc, "3 training nodes", "4 trainers")


def run_server(args: list, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgnn.trainer.server", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_server_missing_part(shards, ip1, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", shards, broken], check=True)
    subprocess.run(["rm", "-r", broken / "parts"], check=True)
    proc = run_server(["--shards", broken, "--part", "0", "--ip-config", ip1, "--num-clients", "1",
                       "--cache-dir", tmp_path / "cache", "--metrics-port", "0"])
    assert_one_line_error(proc, "parts/part-00000.json")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_server_wrong_checksum(shards, ip1, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", shards, broken], check=True)
    edges = broken / "edges" / "part=0" / "data.parquet"
    data = bytearray(edges.read_bytes())
    data[len(data) // 2] ^= 0xFF
    edges.write_bytes(bytes(data))
    proc = run_server(["--shards", broken, "--part", "0", "--ip-config", ip1, "--num-clients", "1",
                       "--cache-dir", tmp_path / "cache", "--metrics-port", "0"])
    assert_one_line_error(proc, "edges/part=0/data.parquet", "checksum")


@pytest.mark.parametrize("name", ["halo", "nodes"])
def test_server_with_a_deleted_shard_file_names_it(shards, ip1, tmp_path, name):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", shards, broken], check=True)
    (broken / name / "part=0" / "data.parquet").unlink()
    proc = run_server(["--shards", broken, "--part", "0", "--ip-config", ip1, "--num-clients", "1",
                       "--cache-dir", tmp_path / "cache", "--metrics-port", "0"])
    assert_one_line_error(proc, f"{name}/part=0/data.parquet: missing shard file")


def test_train_by_hand_without_graph_servers_gives_up_in_one_line(shards, ip1):
    proc = run_train(["--shards", shards, "--ip-config", ip1, "--metrics-port", "0"])
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train: error: ")]
    assert errors == [f"train: error: cannot reach the graph servers of {ip1} (127.0.0.1) after 1 tries "
                      "3 s apart: start them first (`launch` does), or check the addresses"], proc.stderr
    assert "Traceback" not in proc.stderr
