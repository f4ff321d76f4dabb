"""deploy/ against a real Prometheus scraping real distgnn /metrics endpoints.

The scraped processes are pluggable (`ProcessSet`): `simulated_run` starts small Python
processes (this file run as a script) that use distgnn.metrics exactly as the graph
server, trainer and launcher do, two emulated hosts on loopback (127.0.0.1, 127.0.0.2),
each with one server and one trainer, plus a launcher. A real training run can provide
its own ProcessSet (targets + stop) and reuse `prometheus_scraping` and
`check_prometheus_against`.

Run as a script, this file is that simulated process:
    python tests/test_prometheus_integration.py ROLE --addr A --job J --host H [--rank R --part P --slow F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from clusterutil import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
JOB = "itest-1"
SCRAPE_INTERVAL = "1s"
# What Grafana would put for $__rate_interval with a 1 s scrape interval (at least 4 scrapes).
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__interval": "1s", "$__range": "1m"}


# ------------------------------------------------------------------ the simulated process (script mode)

def _worker(argv: list[str]) -> int:
    from distgnn import metrics

    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["launcher", "server", "trainer"])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--slow", type=float, default=1.0, help="multiplies the trainer's phase times")
    args = parser.parse_args(argv)

    if args.role == "trainer":
        sink = metrics.TrainerMetrics(job=args.job, host=args.host, rank=args.rank, part=args.part)
        sink.info({"lr": 0.01, "batch_size": 64, "fanouts": "10,5"})
    elif args.role == "server":
        sink = metrics.ServerMetrics(job=args.job, host=args.host, rank=args.rank, part=args.part)
        sink.partition(nodes=1000 + args.part, edges=5000, halo_nodes=120, size_bytes=1 << 20)
        sink.set_up(True)
    else:
        sink = metrics.LauncherMetrics(job=args.job, host=args.host)
        sink.processes({("server", "running"): 2, ("trainer", "running"): 2})
        sink.run_state("running")
    exporter = metrics.start_exporter(0, args.addr, sink.registry)
    print(f"port {exporter.port}", flush=True)

    # The parent ends the process by closing stdin; the deadline bounds an orphan's life.
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    deadline = time.monotonic() + 300
    step = 0
    while not stop.wait(0.05) and time.monotonic() < deadline:
        if args.role != "trainer":
            continue
        step += 1
        base = {"sample": 0.004, "fetch": 0.006, "forward": 0.003, "backward": 0.005, "optimizer": 0.002}
        sink.step(
            phases={k: v * args.slow for k, v in base.items()},
            seeds=64, sampled_edges=640, remote_bytes=4096, loss=2.0 / step,
            lr=0.01, grad_norm=1.0 + 1.0 / step, loss_scale=65536.0,
        )
        if step % 10 == 0:
            sink.epoch_end(step // 10 - 1, 0.5, {"train": 0.5, "val": 0.45, "test": 0.44})
            # what a link-prediction trainer reports beside (or instead of) accuracy
            sink.eval_scores({"val": {"auc": 0.9, "mrr": 0.4}, "test": {"auc": 0.89, "mrr": 0.38}})
            sink.gpu_memory(1 << 24)
    exporter.close()
    return 0


# ------------------------------------------------------------------ process sets

@dataclass(kw_only=True)
class ProcessSet:
    """Processes exposing /metrics: what Prometheus should scrape, and how to stop them."""

    targets: list  # list[distgnn.metrics.Target]
    stop: Callable[[], None]
    describe: Callable[[], str] = lambda: ""
    """Diagnostics (e.g. the processes' stderr) for failure messages."""


@dataclass(kw_only=True)
class _Worker:
    proc: subprocess.Popen
    stderr: Path
    port: int = 0


def _start_worker(argv: list[str], stderr: Path) -> _Worker:
    err = open(stderr, "w")
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
    )
    err.close()
    return _Worker(proc=proc, stderr=stderr)


def _read_port(worker: _Worker, timeout: float) -> int:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(worker.proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    match = re.fullmatch(r"port (\d+)\n", lines[0]) if lines else None
    if not match:
        raise AssertionError(
            f"worker {worker.proc.args[2:]} did not report its port within {timeout}s; stderr:\n{worker.stderr.read_text()}"
        )
    return int(match.group(1))


def _stop_workers(workers: list[_Worker]) -> None:
    for w in workers:
        if w.proc.stdin and not w.proc.stdin.closed:
            w.proc.stdin.close()
    for w in workers:
        try:
            w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(timeout=10)
        if w.proc.stdout:
            w.proc.stdout.close()


def simulated_run(tmp: Path) -> ProcessSet:
    """2 hosts x (1 graph server + 1 trainer) + a launcher, on loopback; rank 1 is 4x slower."""
    from distgnn.metrics import process_target

    hosts = [("h0", "127.0.0.1"), ("h1", "127.0.0.2")]
    plan = [("launcher", "h0", "127.0.0.1", None, None, 1.0)]
    for index, (host, addr) in enumerate(hosts):
        plan.append(("server", host, addr, index, index, 1.0))
        plan.append(("trainer", host, addr, index, index, 4.0 if index == 1 else 1.0))
    workers: list[_Worker] = []
    targets = []
    try:
        for role, host, addr, rank, part, slow in plan:
            argv = [role, "--addr", addr, "--job", JOB, "--host", host, "--slow", str(slow)]
            if rank is not None:
                argv += ["--rank", str(rank), "--part", str(part)]
            workers.append(_start_worker(argv, tmp / f"{role}-{host}.stderr"))
        for (role, host, addr, rank, part, _), worker in zip(plan, workers):
            worker.port = _read_port(worker, timeout=30)
            targets.append(process_target(addr, worker.port, job=JOB, host=host, role=role, rank=rank, part=part))
    except BaseException:
        _stop_workers(workers)
        raise

    def describe() -> str:
        return "\n".join(f"--- {w.stderr.name} (exit {w.proc.poll()}):\n{w.stderr.read_text()[-2000:]}" for w in workers)

    return ProcessSet(targets=targets, stop=lambda: _stop_workers(workers), describe=describe)


# ------------------------------------------------------------------ Prometheus

def _require_tools() -> None:
    assert PROMETHEUS and PROMTOOL, "prometheus and promtool must be on PATH (`make system-deps` installs them)"


def _rewrite_config(shipped: dict, targets_file: Path) -> dict:
    """The shipped config with only the targets path and the scrape interval changed."""
    config = json.loads(json.dumps(shipped))
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    (job,) = config["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    sd["files"] = [str(targets_file)]
    return config


@dataclass(kw_only=True)
class Prometheus:
    proc: subprocess.Popen
    url: str
    log: Path

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> dict:
        """An instant query; returns the API's whole answer (status, data or error)."""
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            return json.load(exc)

    def wait_for(self, what: str, probe: Callable[[], object], timeout: float) -> object:
        """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                last = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _start_prometheus(config_file: Path, storage: Path, log: Path) -> Prometheus:
    _require_tools()
    # The port is chosen free just before Prometheus binds it; retry if another process took it meanwhile.
    for _ in range(3):
        port = free_port()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        prom = Prometheus(proc=proc, url=f"http://127.0.0.1:{port}", log=log)
        try:
            prom.wait_for("prometheus to be ready", lambda: _ready(prom), timeout=30)
            return prom
        except AssertionError:
            _stop_prometheus(prom)
            if "address already in use" not in log.read_text():
                raise
    raise AssertionError("could not find a free port for prometheus")


def _ready(prom: Prometheus) -> bool:
    with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as response:
        return response.status == 200


def _stop_prometheus(prom: Prometheus) -> None:
    prom.proc.terminate()
    try:
        prom.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        prom.proc.kill()
        prom.proc.wait(timeout=10)


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    _require_tools()
    result = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# ------------------------------------------------------------------ expressions shipped in deploy/

def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "distgnn.json").read_text())


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[tuple[str, str]]:
    import yaml

    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "distgnn.yml").read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def interpolate(expr: str, variables: dict[str, str]) -> str:
    """What Grafana sends to Prometheus: dashboard and built-in variables replaced."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"uninterpolated variable in {expr!r}"
    return expr


@contextlib.contextmanager
def prometheus_scraping(processes: ProcessSet, tmp: Path, targets_file: Path | None = None) -> Iterator[Prometheus]:
    """A real Prometheus with the shipped config (rewritten only for the targets path and
    the scrape interval) scraping `processes`; failures inside carry its log and theirs.
    `targets_file`: a launcher's own file_sd file; by default one is written for `processes`."""
    import yaml

    from distgnn.metrics import file_sd_path, write_file_sd

    if targets_file is None:
        targets_file = file_sd_path(tmp / "run")
        write_file_sd(targets_file, processes.targets)
    # The shipped folder, copied so rules/*.yml resolve as they do in deploy/compose.yml.
    prom_dir = tmp / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", prom_dir)
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(_rewrite_config(shipped, targets_file)))
    _promtool("check", "config", str(prom_dir / "prometheus.yml"))

    prom = _start_prometheus(prom_dir / "prometheus.yml", tmp / "tsdb", tmp / "prometheus.log")
    try:
        yield prom
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- prometheus log:\n{prom.log.read_text()[-3000:]}\n{processes.describe()}") from None
    finally:
        _stop_prometheus(prom)


def check_prometheus_against(
    prom: Prometheus, processes: ProcessSet, *, job: str, may_be_empty: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Every target up with its labels, the rules loaded, every dashboard query answering
    with data and every rule expression evaluating, promtool's lint on each live /metrics.
    `may_be_empty` names metrics a panel may lack (GPU memory on CPU, the loss scale
    without AMP). Returns the Grafana variables used, for further queries."""
    _check_scraped(prom, processes)
    _check_rules_loaded(prom)
    trainers = sum(1 for t in processes.targets if t.labels.get("role") == "trainer")
    variables = _check_dashboard(prom, job=job, trainers=trainers, may_be_empty=may_be_empty)
    for name, expr in rule_expressions():
        answer = prom.query(expr)
        assert answer["status"] == "success", f"rule {name}: {answer.get('error')}"
    for target in processes.targets:
        with urllib.request.urlopen(f"http://{target.hostport}/metrics", timeout=10) as response:
            _promtool("check", "metrics", stdin=response.read().decode())
    return variables


def _check_scraped(prom: Prometheus, processes: ProcessSet) -> None:
    expected = {t.hostport for t in processes.targets}

    def all_up() -> bool:
        active = prom.get("/api/v1/targets", state="active")["data"]["activeTargets"]
        up = {t["labels"]["instance"] for t in active if t["health"] == "up"}
        return up == expected

    prom.wait_for(f"all {len(expected)} targets to be scraped", all_up, timeout=30)
    answer = prom.query('up{job="distgnn"}')
    assert answer["status"] == "success", answer
    got = {r["metric"]["instance"]: r for r in answer["data"]["result"]}
    assert set(got) == expected
    for target in processes.targets:
        series = got[target.hostport]
        assert series["value"][1] == "1", series
        # The file_sd labels the launcher writes arrive on every series of the target.
        for name, value in target.labels.items():
            assert series["metric"].get(name) == value, (name, series)


def _check_rules_loaded(prom: Prometheus) -> None:
    groups = prom.get("/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {name for name, _ in rule_expressions()}, loaded


def _check_dashboard(prom: Prometheus, *, job: str, trainers: int, may_be_empty: frozenset[str]) -> dict[str, str]:
    (variable,) = dashboard()["templating"]["list"]
    # label_values(SELECTOR, LABEL) is Grafana's; it asks the label-values API.
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
    assert match, variable
    values = prom.get(f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)})["data"]
    assert job in values, values
    variables = {**GRAFANA_VARIABLES, f"${variable['name']}": job}

    # Rates need two scrapes in their window: wait for the slowest-to-fill panel kind.
    throughput = interpolate(
        next(e for t, e in dashboard_targets() if t.startswith("Throughput") and "by (rank)" in e), variables
    )
    prom.wait_for(f"throughput of all {trainers} ranks", lambda: len(prom.query(throughput)["data"]["result"]) == trainers,
                  timeout=30)

    empty = []
    for title, expr in dashboard_targets():
        query = interpolate(expr, variables)
        answer = prom.query(query)
        assert answer["status"] == "success", f"panel {title!r}: {query}: {answer.get('error')}"
        if not answer["data"]["result"] and not any(name in expr for name in may_be_empty):
            empty.append(f"{title}: {query}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    return variables


def _check_simulated_straggler(prom: Prometheus, variables: dict[str, str]) -> None:
    """Rank 1's phases take 4x as long as rank 0's: the straggler panel and the straggler
    alert's condition single it out (the alert itself fires once that holds 5 minutes)."""
    straggler = next(e for t, e in dashboard_targets() if t.startswith("Stragglers"))
    answer = prom.query(interpolate(straggler, variables))
    ratios = {r["metric"]["rank"]: float(r["value"][1]) for r in answer["data"]["result"]}
    assert ratios["1"] > 1.5 > ratios["0"], ratios
    answer = prom.query(dict(rule_expressions())["DistgnnStragglerRank"])
    assert {r["metric"]["rank"] for r in answer["data"]["result"]} == {"1"}, answer


# ------------------------------------------------------------------ tests

def test_simulated_run_is_scraped_and_every_dashboard_and_alert_query_works(tmp_path: Path) -> None:
    processes = simulated_run(tmp_path)
    try:
        with prometheus_scraping(processes, tmp_path) as prom:
            variables = check_prometheus_against(prom, processes, job=JOB)
            _check_simulated_straggler(prom, variables)
    finally:
        processes.stop()


def test_targets_file_updates_are_picked_up(tmp_path: Path) -> None:
    """The launcher rewrites the targets file as processes start and stop; Prometheus follows.
    (Discovery does not need the endpoints to answer: unanswered targets are active and down.)"""
    import yaml

    from distgnn.metrics import file_sd_path, process_target, write_file_sd

    targets = [process_target("127.0.0.1", free_port(), job=JOB, host="h0", role="trainer", rank=r, part=0)
               for r in range(3)]
    targets_file = file_sd_path(tmp_path / "run")
    write_file_sd(targets_file, targets[:1])
    prom_dir = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", prom_dir)
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(_rewrite_config(shipped, targets_file)))
    prom = _start_prometheus(prom_dir / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prometheus.log")
    try:
        def active() -> set[str]:
            return {t["labels"]["instance"] for t in prom.get("/api/v1/targets", state="active")["data"]["activeTargets"]}

        prom.wait_for("the first target", lambda: active() == {targets[0].hostport}, timeout=30)
        # One rewrite that both adds (two processes started) and removes (the first one stopped).
        write_file_sd(targets_file, targets[1:])
        prom.wait_for("the rewritten targets", lambda: active() == {t.hostport for t in targets[1:]}, timeout=30)
    finally:
        _stop_prometheus(prom)


def test_shipped_config_and_rules_pass_promtool() -> None:
    _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    _promtool("check", "rules", str(DEPLOY / "prometheus" / "rules" / "distgnn.yml"))
    # Alert semantics: stall after 5 minutes, target down, NaN/Inf loss, straggler over 1.5x the median.
    _promtool("test", "rules", str(DEPLOY / "prometheus" / "tests" / "distgnn.test.yml"))


def test_rewrite_changes_only_targets_path_and_scrape_interval(tmp_path: Path) -> None:
    import yaml

    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    rewritten = _rewrite_config(shipped, tmp_path / "t.json")
    assert rewritten["global"].pop("scrape_interval") == SCRAPE_INTERVAL
    assert rewritten["scrape_configs"][0]["file_sd_configs"][0].pop("files") == [str(tmp_path / "t.json")]
    shipped["global"].pop("scrape_interval")
    shipped["scrape_configs"][0]["file_sd_configs"][0].pop("files")
    assert rewritten == shipped


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source of a compose service's short-syntax volumes."""
    mounts = {}
    for volume in service["volumes"]:
        parts = volume.split(":")
        if parts[-1] in ("ro", "rw"):
            parts.pop()
        # The source may hold colons itself (${VAR:?message}); the container path does not.
        mounts[parts[-1]] = ":".join(parts[:-1])
    return mounts


def test_deploy_files_agree_with_each_other() -> None:
    """compose mounts, the Prometheus targets path, the Grafana datasource and the dashboard fit together."""
    import yaml

    from distgnn.metrics import file_sd_path

    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    prom_mounts = _mounts(compose["services"]["prometheus"])
    run_mount = next(m for m, src in prom_mounts.items() if "DISTGNN_RUN_DIR" in src)
    assert prom_mounts["/etc/prometheus"] == "./prometheus"

    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (sd_file,) = shipped["scrape_configs"][0]["file_sd_configs"][0]["files"]
    # The file the launcher writes, seen through the run folder's mount.
    assert sd_file == str(file_sd_path(run_mount))
    assert shipped["scrape_configs"][0]["honor_labels"] is True

    graf_mounts = _mounts(compose["services"]["grafana"])
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "distgnn.yml").read_text())
    (prov,) = provider["providers"]
    assert graf_mounts[prov["options"]["path"]] == "./grafana/dashboards"
    assert graf_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"

    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "distgnn.yml").read_text())
    (ds,) = datasources["datasources"]
    listen = next(a for a in compose["services"]["prometheus"]["command"] if a.startswith("--web.listen-address="))
    assert ds["url"] == "http://" + listen.split("=", 1)[1]
    assert ds["jsonData"]["timeInterval"] == shipped["global"]["scrape_interval"]
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"]), panel["title"]


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = "\n".join(e for _, e in dashboard_targets())
    for metric in (
        "distgnn_trainer_seeds_total", "distgnn_trainer_step_phase_seconds", "distgnn_trainer_loss",
        "distgnn_trainer_accuracy_ratio", "distgnn_process_resident_memory_bytes", "distgnn_trainer_gpu_memory_bytes",
        "distgnn_launcher_run_state", "distgnn_trainer_step_seconds_bucket", "distgnn_trainer_eval_score",
    ):
        assert metric in exprs, metric
    titles = [t for t, _ in dashboard_targets()]
    assert len({p["id"] for p in dashboard()["panels"]}) == len(dashboard()["panels"])
    assert any(t.startswith("Stragglers") for t in titles)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))


@pytest.mark.netns
def test_real_two_host_training_is_scraped_through_the_launchers_targets(tmp_path: Path, emu) -> None:
    """`launch` over ssh into 2 emulated hosts, real graph servers and trainers with metrics
    on; Prometheus reads the launcher's own targets file while they train."""
    import signal

    from clusterutil import LAUNCH, wait_gone
    from distgnn.metrics import file_sd_path, read_file_sd

    graph = "synthetic:nodes=20000,degree=8,classes=8,feat_dim=32,seed=1"
    shards = tmp_path / "shards"
    subprocess.run([Path(sys.executable).parent / "partition", "--graph", graph, "--num-parts", "2",
                    "--out", shards, "--quiet"], check=True, timeout=300)
    hosts = tmp_path / "ip_config.txt"
    hosts.write_text("".join(f"{h.address} {free_port()}\n" for h in emu.hosts))
    base = free_port()
    job = "real-run"
    argv = [*LAUNCH, "--hosts", str(hosts), "--shards", str(shards), "--workspace", str(tmp_path / "ws"),
            "--job-id", job, "--master-port", str(free_port()), "--metrics-port", str(base),
            "--metrics-linger", "0", *[f"--ssh-option={o}" for o in emu.ssh_options()],
            "--", "train", "--fanouts", "5,10", "--batch-size", "64", "--hidden", "32", "--epochs", "1000",
            "--log-every", "5"]  # fmt: skip
    launch = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    run = tmp_path / "ws" / "runs" / job
    targets_file = file_sd_path(run)
    try:
        deadline = time.monotonic() + 120
        targets = []
        # launcher + 2 graph servers + 2 trainers
        while len(targets) < 5 and time.monotonic() < deadline and launch.poll() is None:
            time.sleep(0.5)
            targets = read_file_sd(targets_file) if targets_file.exists() else []
        assert len(targets) == 5, f"targets: {targets}; launch exit {launch.poll()}"
        processes = ProcessSet(targets=targets, stop=lambda: None)
        with prometheus_scraping(processes, tmp_path, targets_file=targets_file) as prom:
            check_prometheus_against(prom, processes, job=job, may_be_empty=frozenset(
                {"distgnn_trainer_gpu_memory_bytes", "distgnn_trainer_amp_loss_scale"}))
    finally:
        launch.send_signal(signal.SIGTERM)
        try:
            launch.communicate(timeout=60)
        finally:
            if launch.poll() is None:
                launch.kill()
    assert wait_gone(run) == []
