"""`--config FILE` for train and launch (distgnn.configfile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distgnn import configfile
from distgnn.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def train_parser():
    from distgnn.trainer.config import build_parser

    return build_parser()


def test_values_lists_switches_and_repeatable_options_become_flags():
    from distgnn.launcher.cli import build_parser

    tokens = configfile.to_argv({"gpus_per_host": 2, "env": ["A=1", "B=x y"], "stage-shards": True,
                                 "dry-run": "json"}, build_parser(), "f")
    assert tokens == ["--gpus-per-host=2", "--env=A=1", "--env=B=x y", "--stage-shards", "--dry-run=json"]
    tokens = configfile.to_argv({"fanouts": [10, 25], "eval-fanouts": [-1, -1], "resume": False, "lr": 0.01},
                                train_parser(), "f")
    assert tokens == ["--fanouts=10,25", "--eval-fanouts=-1,-1", "--lr=0.01"]


@pytest.mark.parametrize("options, message", [
    ({"epoch": 3}, "f: unknown option 'epoch' (not an option of `train`)"),
    ({"trainer-module": "x"}, "f: unknown option 'trainer-module'"),  # hidden options stay hidden
    ({"config": "other.yaml"}, "f: unknown option 'config'"),
    ({"resume": "yes"}, "f: resume: expected true or false, got 'yes'"),
    ({"epochs": None}, "f: epochs: no value (remove the key to keep the default)"),
    ({"fanouts": {"a": 1}}, "f: fanouts: expected a value or a list, got a mapping"),
    ({"fanouts": [[1, 2]]}, "f: fanouts: expected a plain value, got [1, 2]"),
])
def test_bad_options_are_one_line_naming_key_and_file(options, message):
    parser = train_parser() if "trainer-module" not in options else __import__(
        "distgnn.launcher.cli", fromlist=["build_parser"]).build_parser()
    with pytest.raises(InputError) as err:
        configfile.to_argv(options, parser, "f")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"^--config .*nope.yaml: file not found$"):
        configfile.load(tmp_path / "nope.yaml")
    bad = write(tmp_path, "epochs: 3\nfanouts: [10, 25\n")
    with pytest.raises(InputError, match=r"^--config .*run.yaml: line 3 column 1: not valid YAML"):
        configfile.load(bad)
    with pytest.raises(InputError, match=r"expected a mapping of option names to values, got a list"):
        configfile.load(write(tmp_path, "- epochs\n- 3\n"))
    assert configfile.load(write(tmp_path, "# nothing yet\n")) == {}


def test_the_flag_is_taken_before_the_train_command_only():
    assert configfile.take_config_flag(["--config", "a.yaml", "--x", "--", "train", "--config", "b"]) == (
        Path("a.yaml"), ["--x", "--", "train", "--config", "b"])
    assert configfile.take_config_flag(["--config=a.yaml"]) == (Path("a.yaml"), [])
    with pytest.raises(InputError, match="--config: give one file"):
        configfile.take_config_flag(["--config", "a", "--config", "b"])
    with pytest.raises(InputError, match="--config: expected a YAML file"):
        configfile.take_config_flag(["--config"])


def test_train_reads_the_file_and_its_own_flags_win(tmp_path):
    from distgnn.trainer.config import config_from_args

    path = write(tmp_path, "shards: s\nip_config: ip.txt\nfanouts: [5, 10]\nepochs: 7\nmodel: gat\nheads: 2\n")
    cfg = config_from_args(["--config", str(path), "--epochs", "3"])
    assert tuple(cfg.fanouts) == (5, 10) and cfg.epochs == 3 and cfg.model == "gat" and cfg.heads == 2
    with pytest.raises(InputError, match=r"unknown option 'epoch'"):
        config_from_args(["--config", str(write(tmp_path, "epoch: 3\n", "bad.yaml")), "--shards", "s",
                          "--ip-config", "i"])


def launch_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from distgnn.launcher.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pubmed_shards(tmp_path_factory) -> Path:
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("cfg") / "shards"
    subprocess.run([Path(sys.executable).parent / "partition", "--graph", REPO / "data" / "pubmed", "--num-parts", "1",
                    "--out", out, "--quiet"], check=True, timeout=300)
    return out


def test_launch_takes_launch_and_train_options_from_one_file(tmp_path, pubmed_shards, capsys):
    hosts = write(tmp_path, "127.0.0.1 30050\n", "ip.txt")
    path = write(tmp_path, f"hosts: {hosts}\nshards: {pubmed_shards}\ntrainers-per-host: 2\nmaster-port: 29512\n"
                           "env: [A=1]\ntrain:\n  fanouts: [5, 10]\n  epochs: 7\n  model: gcn\n")
    code, out, err = launch_main(["--config", str(path), "--dry-run=json", "--", "train", "--epochs", "3"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    trainer = next(p for p in plan["processes"] if p["role"] == "trainer")
    # the file's train options first, the command line's after them: its --epochs wins
    assert trainer["argv"][-5:] == ["--fanouts=5,10", "--epochs=7", "--model=gcn", "--epochs", "3"]
    assert plan["host_trainers"] == [2] and trainer["env"]["A"] == "1"
    # the train section alone stands for the train command
    code, out, err = launch_main(["--config", str(path), "--dry-run=json"], capsys)
    assert code == 0, err
    assert json.loads(out)["processes"][1]["argv"][-3:] == ["--fanouts=5,10", "--epochs=7", "--model=gcn"]


@pytest.mark.parametrize("text, message", [
    ("hosts: h\nshards: s\ngpus: 2\n", "launch: error: --config {path}: unknown option 'gpus' (not an option of "
                                       "`launch`)"),
    ("hosts: h\nshards: s\ntrain:\n  epoch: 2\n", "launch: error: --config {path}: train: unknown option 'epoch' "
                                                  "(not an option of `train`)"),
    ("hosts: h\nshards: s\ntrain: [1]\n", "launch: error: --config {path}: train: expected a mapping of train "
                                          "options"),
])
def test_launch_refuses_a_bad_file_in_one_line(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    code, _out, err = launch_main(["--config", str(path), "--dry-run", "--", "train"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [message.format(path=path)]


def test_resume_reads_the_job_s_own_config_and_refuses_what_it_cannot_continue(tmp_path, pubmed_shards, capsys):
    from distgnn.launcher import rundir
    from distgnn.launcher.cli import config_from_args

    hosts = write(tmp_path, "127.0.0.1 30050\n", "ip.txt")
    ws = tmp_path / "ws"
    code, _out, err = launch_main(["--resume"], capsys)
    assert code == 2 and err.strip() == "launch: error: argument --resume: expected one argument"
    code, _out, err = launch_main(["--resume", "nope", "--workspace", str(ws)], capsys)
    assert code == 2 and err.strip() == f"launch: error: --resume nope: no run folder {ws}/runs/nope (see --workspace)"
    run = ws / "runs" / "job1"
    run.mkdir(parents=True)
    code, _out, err = launch_main(["--resume", "job1", "--workspace", str(ws)], capsys)
    assert "has no config.yaml" in err and code == 2
    base = f"hosts: {hosts}\nshards: {pubmed_shards}\nworkspace: {ws}\n"
    (run / "config.yaml").write_text(base + "train:\n  epochs: 3\n")
    code, _out, err = launch_main(["--resume", "job1", "--workspace", str(ws)], capsys)
    assert err.strip() == "launch: error: train options: --resume: needs --checkpoint-dir" and code == 2
    (run / "config.yaml").write_text(base + "train:\n  epochs: 3\n  checkpoint-dir: ck\n")
    code, _out, err = launch_main(["--resume", "job1", "--workspace", str(ws)], capsys)
    assert "--checkpoint-dir ck is relative" in err and code == 2
    (run / "config.yaml").write_text(base + f"train:\n  epochs: 3\n  checkpoint-dir: {tmp_path / 'ck'}\n")
    cfg = config_from_args(["--resume", "job1", "--workspace", str(ws), "--", "train", "--epochs", "5"], environ={})
    assert cfg.resume and cfg.job_id == "job1" and cfg.checkpoint_dir == tmp_path / "ck"
    assert cfg.train_args[-3:] == ["--epochs", "5", "--resume"] and "--epochs=3" in cfg.train_args
    assert cfg.collect == [tmp_path / "ck"]
    rundir.write_status(run, {"status": "succeeded"})
    code, _out, err = launch_main(["--resume", "job1", "--workspace", str(ws)], capsys)
    assert err.strip() == "launch: error: --resume job1: the job succeeded; there is nothing to resume"
    code, _out, err = launch_main(["--resume", "job1", "--config", str(run / "config.yaml")], capsys)
    assert "give one" in err and code == 2


def test_a_resumed_attempt_keeps_the_last_one_s_records(tmp_path):
    from distgnn.launcher import rundir

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "rank-00000.jsonl").write_text("{}\n")
    rundir.write_status(run, {"status": "failed"})
    (run / "config.yaml").write_text("epochs: 3\n")
    (run / "shards").mkdir()
    assert rundir.archive_attempt(run) == run / "attempt-1"
    # the options stay for a further resume, should this attempt fail before writing its own
    assert (run / "config.yaml").exists() and (run / "attempt-1" / "config.yaml").exists()
    assert (run / "attempt-1" / "status.json").exists() and not (run / "status.json").exists()
    assert (run / "attempt-1" / "logs" / "rank-00000.jsonl").exists() and not (run / "logs").exists()
    assert (run / "shards").is_dir()  # staged shards stay for the next attempt
    (run / "logs").mkdir()
    assert rundir.archive_attempt(run) == run / "attempt-2"
