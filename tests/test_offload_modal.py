"""The Modal backend's app built offline with the real SDK; the remote body run with .local()
against a temp directory as the volume; missing credentials become a clear error."""

from __future__ import annotations

import sys
import warnings

import modal
import pytest

from daemon.cloud.offload import JobSpec, OffloadAuthError
from daemon.cloud.offload.modal_backend import MOUNT, ModalBackend, build_app
from daemon.state import config as config_mod
from tests.helpers import JOBS

CFG = config_mod.defaults()["offload"] | {"backend": "modal", "timeout_s": 7200.0, "retries": 4,
                                          "requirements": ["tiktoken==0.7.0"]}


def test_app_is_built_offline_with_the_pinned_gpu_timeout_retries_volume_and_image():
    app, fn, vol, s, image, retries = build_app(CFG, "reference-run7")
    assert isinstance(app, modal.App) and isinstance(fn, modal.Function)
    assert fn._spec_.gpus == "A100-40GB"  # pinned: a bare "A100" may be the 80 GB card
    assert list(fn._spec_.volumes) == [MOUNT] and repr(fn._spec_.volumes[MOUNT]) == repr(vol)
    assert s.volume_name == "nightshift-reference-run7"
    img = fn._spec_.image
    assert img._added_python_source_set == frozenset({"daemon", "trainer"})  # the project's source
    pip_layer = img._deps()[0]  # the SDK's own Dockerfile for the pip layer, read offline
    cells = dict(zip(pip_layer._load.__code__.co_freevars, pip_layer._load.__closure__, strict=True))
    commands = cells["dockerfile_function"].cell_contents("2024.10").commands
    assert any("pip install" in c and "torch==2.13.0" in c and "tiktoken==0.7.0" in c for c in commands)
    assert s.timeout_s == 7200 and isinstance(retries, modal.Retries) and retries.max_retries == 4
    assert "torch==2.13.0" in s.packages and "tiktoken==0.7.0" in s.packages
    assert s.local_sources == ("daemon", "trainer") and s.python_version == "3.11"


def test_remote_body_runs_locally_against_a_temp_volume(tmp_path):
    _, fn, *_ = build_app(CFG, "t")
    spec = JobSpec(command=[sys.executable, str(JOBS / "plainjob.py"), "12", "ok"]).to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "executing locally without the mounted volume": intended
        res = fn.local(spec | {"volume_name": "t"}, str(tmp_path), False)
    assert res["state"] == "succeeded" and res["returncode"] == 0
    assert (tmp_path / "run" / "progress.jsonl").read_text().count('"kind": "done"') == 1


def test_missing_modal_token_is_a_clear_error_without_network(tmp_path, monkeypatch):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    b = ModalBackend(CFG)
    with pytest.raises(OffloadAuthError, match="MODAL_TOKEN_ID"):
        b.upload("k", None, [])
    with pytest.raises(OffloadAuthError, match="modal token new"):
        b.launch("k", JobSpec(command=["python"]))
