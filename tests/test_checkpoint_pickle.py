"""No pickle anywhere in a checkpoint (issue 13, item 12): a value JSON can't hold raises at
capture time naming where it sits; a checkpoint whose meta.json carries pickle (format 1 fell
back to it) is refused on load, by the job and by the daemon's torch-free verify, and its
payload never runs."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.format import CorruptCheckpoint, UnsafeCheckpoint, find_latest_valid, verify
from trainer.state import UnsupportedValue, capture, restore


class Plan:
    """A callable LR factor whose state_dict (LambdaLR stores callable objects' __dict__) holds
    something JSON can't: a file handle stand-in."""

    def __init__(self) -> None:
        self.scale = 0.5
        self.source = object()

    def __call__(self, step: int) -> float:
        return self.scale


class Loader:
    def __init__(self, value) -> None:
        self.value = value

    def state_dict(self) -> dict:
        return {"pos": 3, "sampler": {"order": [1, 2], "rng": self.value}}


def model_opt():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_an_unsupported_scheduler_field_raises_at_capture_naming_its_key():
    model, opt = model_opt()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Plan())
    with pytest.raises(UnsupportedValue, match=r"scheduler\.lr_lambdas\[0\]\.source") as e:
        capture(model, opt, step=1, scheduler=sched)
    assert "builtins.object" in str(e.value) and "no pickle" in str(e.value)


@pytest.mark.parametrize("value", [object(), {1, 2}, torch.nn.Linear(1, 1)])
def test_an_unsupported_data_position_raises_naming_its_key(value):
    model, opt = model_opt()
    with pytest.raises(UnsupportedValue, match=r"extra\.sampler\.rng"):
        capture(model, opt, step=1, extra=Loader(value))


def test_supported_odd_values_round_trip_without_pickle(tmp_path):
    """bytes, tuples, int keys, numpy scalars and arrays, dunder-looking keys: exact, no pickle."""
    import numpy as np

    state = {"b": b"\x00\xff", "t": (1, (2.5, "x")), 7: "int key", "__x__": 1,
             "n": np.float32(1.5), "a": np.arange(3, dtype=np.int16), "inf": float("inf")}

    class Extra:
        got = None

        def state_dict(self):
            return state

        def load_state_dict(self, d):
            Extra.got = d

    model, opt = model_opt()
    groups, meta = capture(model, opt, step=1, extra=Extra())
    p = save_checkpoint(tmp_path, 1, groups, meta)
    assert "__pickle__" not in (p / "meta.json").read_text()
    g, m = load_checkpoint(p)
    restore(g, m, model, opt, extra=Extra())
    got = Extra.got
    assert got["b"] == b"\x00\xff" and got["t"] == (1, (2.5, "x")) and got[7] == "int key"
    assert got["__x__"] == 1 and got["n"] == 1.5 and got["inf"] == float("inf")
    assert got["a"].dtype == np.int16 and got["a"].tolist() == [0, 1, 2]


MARKER_PAYLOAD = "import pathlib; pathlib.Path({path!r}).write_text('pwned')"


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (MARKER_PAYLOAD.format(path=self.path),))


def pickled_checkpoint(tmp_path, step: int, marker) -> os.PathLike:
    """A checkpoint as format 1 wrote them when it fell back to pickle for a scheduler field."""
    model, opt = model_opt()
    groups, meta = capture(model, opt, step=step)
    blob = base64.b64encode(pickle.dumps(_Evil(str(marker)))).decode()
    meta["scheduler"] = {"lr_lambdas": [{"fn": {"__pickle__": blob}}], "last_epoch": 3}
    return save_checkpoint(tmp_path, step, groups, meta)


def test_a_checkpoint_carrying_pickle_is_refused_on_load_and_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    p = pickled_checkpoint(tmp_path / "ckpt", 5, marker)
    with pytest.raises(UnsafeCheckpoint, match=r"pickled Python object at scheduler\.lr_lambdas\[0\]\.fn"):
        load_checkpoint(p)
    with pytest.raises(UnsafeCheckpoint, match="unpickling can run code"):
        verify(p, deep=True)
    assert not marker.exists()


def test_the_newest_checkpoint_carrying_pickle_is_skipped_for_an_older_clean_one(tmp_path):
    model, opt = model_opt()
    save_checkpoint(tmp_path, 1, *capture(model, opt, step=1))
    pickled_checkpoint(tmp_path, 2, tmp_path / "marker")
    msgs: list[str] = []
    info = find_latest_valid(tmp_path, log=msgs.append)
    assert info is not None and info.step == 1
    assert "step_000000002" in msgs[0] and "pickled" in msgs[0]
    assert isinstance(UnsafeCheckpoint(tmp_path, "x"), CorruptCheckpoint)  # skipped like corruption


def test_restore_refuses_pickle_even_from_a_meta_that_skipped_verification(tmp_path):
    marker = tmp_path / "marker"
    model, opt = model_opt()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    groups, meta = capture(model, opt, step=1, scheduler=sched)
    meta["scheduler"] = {"x": {"__pickle__": base64.b64encode(pickle.dumps(_Evil(str(marker)))).decode()}}
    with pytest.raises(UnsafeCheckpoint):
        restore(groups, json.loads(json.dumps(meta)), model, opt, scheduler=sched)
    assert not marker.exists()


def test_the_daemon_side_verify_refuses_pickle_without_importing_torch(tmp_path):
    p = pickled_checkpoint(tmp_path, 3, tmp_path / "marker")
    code = ("import sys; from trainer.format import verify, UnsafeCheckpoint\n"
            f"try:\n    verify({str(p)!r})\nexcept UnsafeCheckpoint as e:\n    print('REFUSED', e.reason)\n"
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "REFUSED meta.json carries a pickled Python object" in r.stdout
