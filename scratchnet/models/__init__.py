"""Networks: the paper's network, imported ImageNet classifiers, and one way to load any of them.

    scratchnet.models.paper_net(input_size=224, num_classes=1000, width=1.0, seed=0)
    scratchnet.models.load("squeezenet1_0" | "efficientnet_lite0" | "path/to/model.npz")
"""
from __future__ import annotations

from pathlib import Path

from .network import Network, load_network
from .paper import flops_per_layer, paper_net

#: name -> builder for networks that come with weights (filled by the importers)
PRETRAINED = {}


def register(name):
    def deco(fn):
        PRETRAINED[name] = fn
        return fn
    return deco


def _load_pretrained_modules():
    import importlib
    for mod in ("squeezenet", "efficientnet"):
        try:
            importlib.import_module(f"scratchnet.models.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"scratchnet.models.{mod}":
                raise


def load(name_or_path, device=None, **kw) -> Network:
    """A pretrained network by name, or a network saved by ``Network.save`` by path."""
    _load_pretrained_modules()
    key = str(name_or_path)
    if not key.strip():                 # Path("") is the current folder
        raise ValueError(f"load: expected a model name ({sorted(PRETRAINED)}) or a path, got an empty string")
    if key in PRETRAINED:
        net = PRETRAINED[key](**kw)
    elif Path(key).exists():
        if kw:
            raise ValueError(f"load: {sorted(kw)} are options of the pretrained networks ({sorted(PRETRAINED)}); "
                             f"a saved network ({key}) is loaded as it was saved")
        net = load_network(key)
    else:
        raise ValueError(f"unknown model {key!r}: expected one of {sorted(PRETRAINED)} or a path to a "
                         f".npz saved by scratchnet (no such file)")
    if device is not None:
        from ..backend import resolve_device
        net.to(resolve_device(device))
    return net


__all__ = ["Network", "load", "load_network", "paper_net", "flops_per_layer", "PRETRAINED", "register"]
