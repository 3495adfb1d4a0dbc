"""Training checkpoints: one .npz holding everything a run needs to continue exactly.

    RUN/checkpoint.npz
      __architecture__, __meta__, param/<path>,                  as in Network.save, so the file
      stat/<path>.<key> (BatchNorm statistics), __mean_image__   also loads as a network
      velocity/<path>                                            the SGD momentum buffers
      __train_state__   JSON: epoch, batch (batches done in that epoch), step, the running sums of
                        the epoch, the metric history, the config, and each Dropout layer's
                        generator state (layer.rng.bit_generator.state)

The loader needs no state: its batches are a function of (seed, epoch, batch number).
Written atomically (temporary file + os.replace), so an interrupted write leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backend import get_array_module, to_device
from ..layers import Dropout
from ..models.network import atomic_savez, open_npz

CHECKPOINT_VERSION = 1


def dropout_states(net):
    """{layer path: bit-generator state dict} of every Dropout layer."""
    return {path: layer.rng.bit_generator.state for path, layer in net.named_layers() if isinstance(layer, Dropout)}


def set_dropout_states(net, states):
    layers = {path: layer for path, layer in net.named_layers() if isinstance(layer, Dropout)}
    if set(layers) != set(states):
        raise ValueError(f"checkpoint: dropout layers {sorted(states)} do not match the network's {sorted(layers)}")
    for path, st in states.items():
        layers[path].rng.bit_generator.state = st


def save_checkpoint(path, net, optimiser, state: dict):
    """Write net + optimiser + ``state`` (a JSON-able dict) to ``path`` atomically."""
    state = dict(state, version=CHECKPOINT_VERSION, dropout=dropout_states(net))
    arrays = net.saved_arrays()                          # what Network.save writes, and the training state
    arrays["__train_state__"] = np.array(json.dumps(state))
    for name, v in optimiser.state_arrays().items():
        arrays["velocity/" + name] = v
    atomic_savez(path, arrays)
    return Path(path)


def read_state(path) -> dict:
    """Just the JSON training state of a checkpoint (epoch, step, history, config...)."""
    with _open(path) as z:
        return json.loads(str(z["__train_state__"]))


def read_meta(path) -> dict:
    """Just the network's meta JSON of a checkpoint (class names and wnids, input shape, ...)."""
    with _open(path) as z:
        return json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}


def load_checkpoint(path, net, optimiser) -> dict:
    """Restore parameters, momentum, mean image and dropout generators into ``net`` / ``optimiser``
    (which must have the checkpoint's architecture); returns the training state dict.
    ``net.preprocess`` is left as the caller set it (the Trainer derives it from its config)."""
    path = Path(path)
    with _open(path) as z:
        state = json.loads(str(z["__train_state__"]))
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        for name, layer, key in net.named_params():
            k = "param/" + name
            if k not in z.files:
                raise ValueError(f"{path}: no parameter {name}; was the checkpoint made with another "
                                 f"architecture (--arch/--width/--input-size/--classes)?")
            arr = z[k]
            w = layer.params[key]
            if arr.shape != w.shape:
                raise ValueError(f"{path}: parameter {name} has shape {arr.shape}, this network's is "
                                 f"{tuple(w.shape)}; resume with the same --width/--input-size/--classes")
            device = "gpu" if get_array_module(w) is not np else "cpu"
            layer.params[key] = to_device(arr.astype(w.dtype), device)
        optimiser.load_state_arrays({k[len("velocity/"):]: z[k] for k in z.files if k.startswith("velocity/")})
        if "__mean_image__" in z.files:
            net.mean_image = z["__mean_image__"]
    set_dropout_states(net, state.pop("dropout"))
    return state


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    z = open_npz(path, "training checkpoint", "the trainer")
    if "__train_state__" not in z.files:
        z.close()
        raise ValueError(f"{path} is not a scratchnet training checkpoint (no __train_state__ entry)")
    return z
