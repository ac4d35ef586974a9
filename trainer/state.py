"""Capture and restore everything an exact resume needs, as tensors + JSON.

Groups of tensors (each becomes one safetensors file): ``model`` (the state_dict; tied weights
are deduplicated by the writer and restored as the same tensor), ``optimizer`` (per-parameter
state flattened to ``"<param index>.<key>"``), ``rng`` (RNG byte states). Everything else
(param_groups, scheduler, scaler, step, epoch, data position, versions) goes to JSON meta.

No pickle, ever: a value that is not a tensor, array, number, string, bool, None, bytes, list,
tuple or dict raises ``UnsupportedValue`` at capture time, naming where it sits (say
``scheduler.lr_lambdas[0].fn``), so the job learns it at its first checkpoint, not when a
resume fails. A checkpoint carrying pickle (format 1 fell back to it) is refused on load.
"""

from __future__ import annotations

import base64
import platform
import random
from typing import Any

import torch

from trainer.format import PICKLE_TAG, UnsafeCheckpoint

try:  # numpy is optional for users' jobs
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]


class UnsupportedValue(TypeError):
    """A state value that JSON can't hold exactly and that we refuse to pickle."""

    def __init__(self, key: str, value: Any):
        self.key = key
        super().__init__(
            f"cannot checkpoint {key}: a {type(value).__module__}.{type(value).__qualname__} is "
            "not a tensor, array, number, string, bool, None, bytes, list, tuple or dict, and "
            "checkpoints carry no pickle (loading pickle can run code). Store it as one of those "
            "types (e.g. give the object a state_dict()/load_state_dict() of plain values)")


def _jsonable(v: Any, key: str = "state") -> Any:
    """Make a state_dict JSON-exact: tuples, non-string dict keys and tensors are tagged so that
    ``_unjson`` gives back the same types (AdamW's ``betas`` must come back a tuple, a
    scheduler's int-keyed dict with int keys). ``key`` names the value in errors."""
    if isinstance(v, torch.Tensor):
        return {"__tensor__": v.tolist(), "dtype": str(v.dtype).replace("torch.", "")}
    if np is not None and isinstance(v, np.ndarray):
        return {"__ndarray__": v.tolist(), "dtype": str(v.dtype)}
    if np is not None and isinstance(v, np.ndarray) and v.dtype.hasobject:
        raise UnsupportedValue(key, v)
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            if any(k.startswith("__") and k.endswith("__") for k in v):
                return {"__items__": [[k, _jsonable(x, f"{key}.{k}")] for k, x in v.items()]}
            return {k: _jsonable(x, f"{key}.{k}") for k, x in v.items()}
        return {"__items__": [[_jsonable(k, f"{key} (a key)"), _jsonable(x, f"{key}[{k!r}]")]
                              for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"__tuple__": [_jsonable(x, f"{key}[{i}]") for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [_jsonable(x, f"{key}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(v).decode()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v  # json writes floats with repr(): they round-trip exactly (inf/nan included)
    if np is not None and isinstance(v, np.generic) and not isinstance(v, np.object_):
        return v.item()
    raise UnsupportedValue(key, v)


def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        if "__tensor__" in v:
            dtype = getattr(torch, str(v["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"meta.json: {v['dtype']!r} is not a torch dtype")
            return torch.tensor(v["__tensor__"], dtype=dtype)
        if "__ndarray__" in v:
            dt = np.dtype(v["dtype"])
            if dt.hasobject:
                raise ValueError("meta.json: an object array would need pickle; refused")
            return np.array(v["__ndarray__"], dtype=dt)
        if "__tuple__" in v:
            return tuple(_unjson(x) for x in v["__tuple__"])
        if "__items__" in v:
            return {_unjson(k): _unjson(x) for k, x in v["__items__"]}
        if "__bytes__" in v:
            return base64.b64decode(v["__bytes__"])
        if PICKLE_TAG in v:  # verify() refuses these first; never unpickle whatever the path
            raise UnsafeCheckpoint("meta.json", "carries a pickled Python object; refused "
                                   "(unpickling can run code)")
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    return v


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten optimizer.state_dict(): tensors to dotted keys, the rest (and scalars) to JSON.

    An optimizer that has not stepped has empty state; that round-trips to empty state.
    """
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": _jsonable(sd["param_groups"], "optimizer.param_groups"),
                     "scalars": _jsonable(scalars, "optimizer.state")}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = t
    for pid, st in _unjson(meta["scalars"]).items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": _unjson(meta["param_groups"])})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a training step may draw from: torch's as uint8 tensors, python's and numpy's
    as JSON (exact: Mersenne Twister words are ints)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            tensors[f"torch_cuda_{i}"] = torch.cuda.get_rng_state(i)
    meta: dict[str, Any] = {"python": _jsonable(random.getstate(), "rng.python")}
    if np is not None:
        meta["numpy"] = _jsonable(np.random.get_state(), "rng.numpy")
    return tensors, meta


def load_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"], i)
    random.setstate(_unjson(meta["python"]))
    if np is not None and "numpy" in meta:
        np.random.set_state(_unjson(meta["numpy"]))


def versions() -> dict[str, str]:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    if np is not None:
        v["numpy"] = np.__version__
    return v


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *, step: int,
            epoch: int = 0, scheduler: Any = None, scaler: Any = None, extra: Any = None,
            metrics: dict[str, Any] | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    groups: dict[str, dict[str, torch.Tensor]] = {"model": dict(model.state_dict())}
    meta: dict[str, Any] = {"step": step, "epoch": epoch, "versions": versions()}
    if optimizer is not None:
        groups["optimizer"], meta["optimizer"] = optimizer_state(optimizer)
    groups["rng"], meta["rng"] = rng_state()
    if scheduler is not None:
        meta["scheduler"] = _jsonable(scheduler.state_dict(), "scheduler")
    if scaler is not None:
        meta["scaler"] = _jsonable(scaler.state_dict(), "scaler")
    if extra is not None:
        meta["extra"] = _jsonable(extra.state_dict(), "extra")
    if metrics:
        meta["metrics"] = _jsonable(dict(metrics), "metrics")
    return groups, meta


def restore(groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer | None, *, scheduler: Any = None, scaler: Any = None,
            extra: Any = None) -> None:
    # Group by group, each released once restored: from a lazily mapped checkpoint
    # (trainer.checkpoint.LoadedGroups) only one group's pages are mapped beyond the state.
    release = getattr(groups, "release", lambda group: None)
    if optimizer is not None and hasattr(groups, "writable"):
        groups.writable("optimizer")  # its pages populate in a thread while the model copies
    model.load_state_dict(groups["model"], strict=True)
    release("model")
    if optimizer is not None:
        load_optimizer_state(optimizer, groups.get("optimizer", {}), meta["optimizer"])
        release("optimizer")
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(_unjson(meta["scheduler"]))
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(_unjson(meta["scaler"]))
    if extra is not None and "extra" in meta:
        extra.load_state_dict(_unjson(meta["extra"]))
    load_rng_state(groups["rng"], meta["rng"])
