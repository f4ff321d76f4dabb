"""`--config FILE`: a run described by a YAML file, as people keep training setups under
version control. This module is the only owner of the format.

The file maps option names to values, the same options the command line takes:

    hosts: ip_config.txt          # launch's options at the top ...
    shards: shards/pubmed-4
    gpus-per-host: 4
    env: [NCCL_DEBUG=WARN]        # a repeatable option takes a list
    train:                        # ... and the train command's under `train` (launch only)
      model: gat
      fanouts: [10, 25]           # a list joins with commas where the option takes one value
      epochs: 20
      resume: true                # a switch: true sets it, false leaves it off

Names may use '-' or '_'. The file's options come first and the command line's after them,
so a flag given on the command line wins (a repeatable one adds to the file's). An option
the command does not have is a one-line error naming the key and the file. `launch` writes
the options a run resolved to into its run folder as config.yaml, which is itself a valid
--config file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from distgnn.errors import InputError

FLAG = "--config"
TRAIN_SECTION = "train"
RESOLVED_NAME = "config.yaml"


def take_config_flag(argv: list[str]) -> tuple[Path | None, list[str]]:
    """(the --config path, argv without it); only the options before a `--` are looked at."""
    end = argv.index("--") if "--" in argv else len(argv)
    path, rest = None, []
    i = 0
    while i < end:
        arg = argv[i]
        if arg == FLAG or arg.startswith(FLAG + "="):
            if path is not None:
                raise InputError(f"{FLAG}: give one file")
            if arg == FLAG:
                if i + 1 >= end:
                    raise InputError(f"{FLAG}: expected a YAML file")
                path, i = Path(argv[i + 1]), i + 2
            else:
                path, i = Path(arg.split("=", 1)[1]), i + 1
            continue
        rest.append(arg)
        i += 1
    return path, rest + argv[end:]


def load(path: Path) -> dict[str, Any]:
    """The file's mapping; a missing file, bad YAML or a non-mapping is one line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{FLAG} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{FLAG} {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{FLAG} {path}:{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{FLAG} {path}: expected a mapping of option names to values, got a {type(data).__name__}")
    return data


def to_argv(options: Mapping[str, Any], parser: argparse.ArgumentParser, source: str) -> list[str]:
    """Command-line tokens for the file's options, checked against `parser`'s options."""
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    tokens: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        action = by_flag.get(flag)
        if action is None or action.help == argparse.SUPPRESS or flag in (FLAG, "--help"):
            raise InputError(f"{source}: unknown option {key!r} (not an option of `{parser.prog}`)")
        tokens += _tokens(flag, action, value, f"{source}: {key}")
    return tokens


def _tokens(flag: str, action: argparse.Action, value: Any, where: str) -> list[str]:
    if isinstance(value, dict):
        raise InputError(f"{where}: expected a value or a list, got a mapping")
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return [flag] if value else []
    if value is None:
        raise InputError(f"{where}: no value (remove the key to keep the default)")
    if isinstance(action, argparse._AppendAction):
        return [f"{flag}={_scalar(item, where)}" for item in (value if isinstance(value, list) else [value])]
    if isinstance(value, list):
        return [f"{flag}={','.join(_scalar(item, where) for item in value)}"]
    # FLAG=VALUE: a value such as -1,-1 is not taken for an option
    return [f"{flag}={_scalar(value, where)}"]


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise InputError(f"{where}: expected a plain value, got {value!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolved(ns: argparse.Namespace, parser: argparse.ArgumentParser, *, skip: set[str] = frozenset()) -> dict:
    """The options a parse resolved to, as a --config mapping: every visible option with a
    value (switches only when on), named as on the command line."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "config"):
            continue
        name = next(o for o in action.option_strings if o.startswith("--")).lstrip("-")
        value = getattr(ns, action.dest, None)
        if name in skip or value is None or value is False or value == []:
            continue
        out[name] = str(value) if isinstance(value, Path) else value
    return out


def dump(data: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)


def expand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with its --config FILE replaced by the file's options (placed first, so the
    command line's own flags win)."""
    path, rest = take_config_flag(argv)
    if path is None:
        return rest
    return to_argv(load(path), parser, f"{FLAG} {path}") + rest
