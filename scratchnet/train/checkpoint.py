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

from ..backend import device_of, to_device
from ..checks import is_int
from ..layers import Dropout
from ..models.npzfile import atomic_savez, check_values, checked_npz_array, npz_member, open_npz

CHECKPOINT_VERSION = 1


def dropout_states(net):
    """{layer path: bit-generator state dict} of every Dropout layer."""
    return {path: layer.rng.bit_generator.state for path, layer in net.named_layers() if isinstance(layer, Dropout)}


def set_dropout_states(net, states):
    """Give each Dropout layer its generator state from ``states`` ({layer path: state dict}); every state
    is tried on a spare generator first, so a mismatch leaves all the layers as they were."""
    layers = {path: layer for path, layer in net.named_layers() if isinstance(layer, Dropout)}
    if not isinstance(states, dict) or set(layers) != set(states):
        got = sorted(states) if isinstance(states, dict) else type(states).__name__
        raise CheckpointError(f"checkpoint: dropout layers {got} do not match the network's {sorted(layers)}")
    for path, st in states.items():
        try:
            type(layers[path].rng.bit_generator)().state = st
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint: the generator state of dropout layer {path} cannot be "
                                  f"restored ({type(e).__name__}: {e})") from None
    for path, st in states.items():
        layers[path].rng.bit_generator.state = st


def save_checkpoint(path, net, optimiser, state: dict):
    """Write net + optimiser + ``state`` to ``path`` atomically. ``state``: a JSON-able dict holding at
    least the position, epoch, batch (batches done in that epoch) and step, integers >= 0 (what a
    resume reads; refused here rather than at the resume)."""
    _check_position(state, f"save_checkpoint({str(path)!r})")
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
        return _state(z, Path(path))


def read_meta(path) -> dict:
    """Just the network's meta JSON of a checkpoint (class names and wnids, input shape, ...)."""
    with _open(path) as z:
        if "__meta__" not in z.files:
            return {}
        meta = _json(z, "__meta__", Path(path))
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: __meta__ must be a JSON object, got {type(meta).__name__}")
        return meta


def load_checkpoint(path, net, optimiser) -> dict:
    """Restore parameters, momentum, mean image and dropout generators into ``net`` / ``optimiser``
    (which must have the checkpoint's architecture); returns the training state dict.
    ``net.preprocess`` is left as the caller set it (the Trainer derives it from its config).
    Everything is read and checked before anything is changed: a checkpoint that is damaged or does
    not fit (a CheckpointError saying why) leaves ``net`` and ``optimiser`` as they were."""
    path = Path(path)
    with _open(path) as z:
        state = _state(z, path)
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        params = []
        for name, layer, key in net.named_params():
            k = "param/" + name
            if k not in z.files:
                raise CheckpointError(f"{path}: no parameter {name}; was the checkpoint made with another "
                                      f"architecture (--arch/--width/--input-size/--classes)?")
            w = layer.params[key]
            arr = npz_member(z, k, path, CheckpointError)
            if arr.shape != w.shape:
                raise CheckpointError(f"{path}: parameter {name} has shape {arr.shape}, this network's is "
                                      f"{tuple(w.shape)}; resume with the same --width/--input-size/--classes")
            check_values(arr, f"parameter {name}", path, CheckpointError)
            params.append((layer, key, arr))
        velocity = {k[len("velocity/"):]: npz_member(z, k, path, CheckpointError)
                    for k in z.files if k.startswith("velocity/")}
        for name, v in velocity.items():
            check_values(v, f"momentum of {name}", path, CheckpointError)
        try:
            velocity = optimiser.checked_state_arrays(velocity)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        mean = None
        if "__mean_image__" in z.files:
            mean = checked_npz_array(z, "__mean_image__", (net.input_shape[0],), path, trailing_ok=True,
                                     error=CheckpointError)
    set_dropout_states(net, state.pop("dropout"))          # checks first, then sets
    for layer, key, arr in params:
        w = layer.params[key]
        layer.params[key] = to_device(arr.astype(w.dtype), device_of(w))
    optimiser.velocity = velocity
    if mean is not None:
        net.mean_image = mean
    return state


class CheckpointError(ValueError):
    """A training checkpoint that cannot be used: damaged, of another version, or of another network;
    the message names the file and what is wrong. A missing file is a FileNotFoundError."""


def _json(z, key, path):
    text = str(npz_member(z, key, path, CheckpointError))
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:           # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: {key} cannot be read as JSON (a damaged file, or one written by "
                              f"another program?): {type(e).__name__}: {e}") from None


def _state(z, path) -> dict:
    """The JSON training state, checked for the entries a resume reads."""
    state = _json(z, "__train_state__", path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: __train_state__ must be a JSON object, got {type(state).__name__}")
    _check_position(state, f"{path}: __train_state__")
    if not isinstance(state.get("dropout", {}), dict) or not isinstance(state.get("config", {}), dict):
        raise CheckpointError(f"{path}: __train_state__'s dropout and config must be JSON objects")
    state.setdefault("dropout", {})
    return state


def _check_position(state, who):
    for k in ("epoch", "batch", "step"):
        if not is_int(state.get(k)) or state[k] < 0:
            raise CheckpointError(f"{who} needs {k} as an integer >= 0, got {state.get(k)!r}")


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    z = open_npz(path, "training checkpoint", "the trainer", CheckpointError)
    if "__train_state__" not in z.files:
        z.close()
        raise CheckpointError(f"{path} is not a scratchnet training checkpoint (no __train_state__ entry)")
    return z
