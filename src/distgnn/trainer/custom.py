"""Your own model: `train --model package.module:factory`.

The protocol (docs/custom-models.md has a worked example, examples/custom_model/):

- `factory(config)` receives a `distgnn.trainer.model.ModelConfig` (in_dim, hidden,
  num_classes = the number of outputs, num_layers, dropout, feature_norm, heads) and returns
  a `torch.nn.Module`. It is called once per trainer, after `torch.manual_seed(--seed)`, so
  every trainer builds the same initial weights.
- `module(layers, x)`: `layers` is a list of `num_layers` `LayerGraph`s, input layer first
  (local edge ids `src`, `dst`, and `num_src`, `num_dst`; the destinations are the first
  `num_dst` sources); `x` holds the input rows of `layers[0]`'s `num_src` nodes. It returns
  `[layers[-1].num_dst, num_classes]`: one row per seed node.
- Optional `module.forward_layer(i, layer, h)`: layer i alone (activation included except
  on the last). With it, batch inference runs layer by layer over all neighbours; without
  it, over each seed's whole num_layers-hop neighbourhood (correct, but slower).
- Write the module in plain PyTorch ops, so it runs on CPU and GPU under `torch.autocast`;
  `distgnn.trainer.model` has the building blocks (`sparse_product`, `mean_aggregate`).

The module must be importable by every trainer on every host: install it into the
environment `launch --python` names, or put its folder on the trainers' path with
`launch --env PYTHONPATH=DIR` (the same path on every host).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from distgnn.errors import InputError


def split_spec(spec: str) -> tuple[str, str]:
    """'package.module:factory' -> (module, factory); empty strings where a part is missing."""
    module, _, name = spec.partition(":")
    return module.strip(), name.strip()


def load_factory(spec: str, extra_path: str | None = None) -> Callable:
    """The factory `spec` names; a one-line InputError naming the module when it cannot be
    imported or the name is not callable. extra_path: a PYTHONPATH to search too (the one
    `launch --env` gives the trainers)."""
    module_name, name = split_spec(spec)
    if not module_name or not name:
        raise InputError(f"--model {spec!r}: expected package.module:factory")
    added = [p for p in (extra_path or "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"--model {spec!r}: cannot import module {module_name!r}: {err}") from None
    except Exception as err:  # the module itself fails while importing
        raise InputError(f"--model {spec!r}: importing module {module_name!r} failed: "
                         f"{type(err).__name__}: {err}") from None
    finally:
        for path in added:
            if path in sys.path:
                sys.path.remove(path)
    factory = getattr(module, name, None)
    if factory is None:
        raise InputError(f"--model {spec!r}: module {module_name!r} has no {name!r}")
    if not callable(factory):
        raise InputError(f"--model {spec!r}: {module_name}.{name} is not callable")
    return factory


def build(cfg):
    """The module the factory makes for cfg (a ModelConfig)."""
    from torch import nn

    module = load_factory(cfg.model)(cfg)
    if not isinstance(module, nn.Module):
        raise InputError(f"--model {cfg.model!r}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module
