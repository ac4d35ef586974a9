"""The checkpoint I/O path (issue 18): xxh3 digests per chunk written while the data goes to
disk, format-1 (zlib crc32) checkpoints still load, files stay safetensors, and a verified
restore hands out tensors on copy-on-write mappings of the files: nothing reaches the model
before every file checks out, and training on restored state never writes the checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from safetensors import safe_open

from tests.helpers import ROOT
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.format import CHUNK, CorruptCheckpoint, chunk_digests, find_latest_valid, verify
from trainer.state import capture, restore


def trained(seed: int = 0, width: int = 16):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(2):
        model(torch.randn(8, width)).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_digests_written_during_the_write_match_the_file_chunk_by_chunk(tmp_path):
    """A 20 MB tensor spans three 8 MiB chunks; the digests computed while writing (streamed,
    in a second thread) equal those of the file as read back."""
    big = {"model": {"w": torch.arange(5_000_000, dtype=torch.float32), "b": torch.ones(3)}}
    p = save_checkpoint(tmp_path, 1, big, {})
    entry = json.loads((p / "meta.json").read_text())["files"]["model.safetensors"]
    data = (p / "model.safetensors").read_bytes()
    assert entry["size"] == len(data) and entry["chunk"] == CHUNK
    assert len(entry["xxh3"]) == 3 and entry["xxh3"] == chunk_digests(data, CHUNK)
    assert verify(p)["step"] == 1


def test_every_group_file_opens_with_safetensors_safe_open(tmp_path):
    model, opt = trained()
    p = save_checkpoint(tmp_path, 2, *capture(model, opt, step=2))
    for group, source in (("model", model.state_dict()), ("optimizer", None)):
        with safe_open(str(p / f"{group}.safetensors"), framework="pt") as f:
            keys = set(f.keys())
            if source is not None:
                assert keys == set(source)
                for k in keys:
                    assert torch.equal(f.get_tensor(k), source[k])
            else:
                assert {"0.exp_avg", "0.exp_avg_sq", "0.step"} <= keys


def format1(path) -> None:
    """Rewrite a checkpoint's meta.json as format 1 wrote it: zlib crc32 per chunk."""
    meta = json.loads((path / "meta.json").read_text())
    meta["format"] = 1
    for name, entry in meta["files"].items():
        data = (path / name).read_bytes()
        del entry["xxh3"]
        entry["crc32"] = chunk_digests(data, entry["chunk"], fn=zlib.crc32)
    (path / "meta.json").write_text(json.dumps(meta))


def test_a_format_1_checkpoint_still_verifies_and_restores(tmp_path):
    model, opt = trained(1)
    p = save_checkpoint(tmp_path, 3, *capture(model, opt, step=3))
    format1(p)
    assert find_latest_valid(tmp_path).step == 3
    m2, o2 = trained(2)
    restore(*load_checkpoint(p), m2, o2)
    for a, b in zip(model.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    f = p / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch in model.safetensors"):
        load_checkpoint(p)


def test_nothing_is_handed_out_when_a_later_file_is_corrupt(tmp_path):
    """The model group is fine, the optimizer's is flipped: the load fails as a whole, so a
    caller can't restore the model from a checkpoint whose optimizer is bad."""
    model, opt = trained(3)
    p = save_checkpoint(tmp_path, 4, *capture(model, opt, step=4))
    f = p / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch in optimizer.safetensors"):
        load_checkpoint(p)


def test_training_on_restored_state_never_writes_the_checkpoint(tmp_path):
    """Restored optimizer state sits on a copy-on-write mapping of the file: stepping the
    optimizer changes the state in memory only; the checkpoint still verifies and reloads equal."""
    model, opt = trained(4)
    p = save_checkpoint(tmp_path, 5, *capture(model, opt, step=5))
    before = {k: v.clone() for k, v in load_checkpoint(p)[0]["optimizer"].items()}
    m2, o2 = trained(5)
    restore(*load_checkpoint(p), m2, o2)
    m2(torch.randn(8, 16)).sum().backward()
    o2.step()
    assert not torch.equal(o2.state[m2[0].weight]["exp_avg"], before["0.exp_avg"])
    verify(p, deep=True)
    again = load_checkpoint(p)[0]["optimizer"]
    assert all(torch.equal(again[k], v) for k, v in before.items())


def test_loaded_groups_survive_the_checkpoint_being_deleted(tmp_path):
    """Retention may delete the directory right after the check: the open files still serve."""
    model, opt = trained(6)
    p = save_checkpoint(tmp_path, 6, *capture(model, opt, step=6))
    groups, meta = load_checkpoint(p)
    shutil.rmtree(p)
    m2, o2 = trained(7)
    restore(groups, meta, m2, o2)
    for a, b in zip(model.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(o2.state[m2[0].weight]["exp_avg_sq"], opt.state[model[0].weight]["exp_avg_sq"])


def test_restored_optimizer_state_keeps_training_bit_exactly(tmp_path):
    model, opt = trained(8)
    p = save_checkpoint(tmp_path, 7, *capture(model, opt, step=7))
    m2, o2 = trained(9)
    restore(*load_checkpoint(p), m2, o2)
    x = torch.randn(8, 16)
    for m, o in ((model, opt), (m2, o2)):
        for _ in range(3):
            m(x).pow(2).sum().backward()
            o.step()
            o.zero_grad()
    for a, b in zip(model.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_without_the_xxhash_package_checkpoints_fall_back_to_crc32_and_say_what_is_missing(tmp_path):
    """A cloud image built from an older package list: the job still checkpoints (format-1
    crc32 digests) and resumes; an xxh3 checkpoint is skipped naming the missing package."""
    model, opt = trained(10)
    save_checkpoint(tmp_path / "x", 1, *capture(model, opt, step=1))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["xxhash"] = None  # import xxhash -> ImportError
        import torch
        from trainer.checkpoint import load_checkpoint, save_checkpoint
        from trainer.format import find_latest_valid
        msgs = []
        assert find_latest_valid({str(tmp_path / "x")!r}, log=msgs.append) is None
        print("SKIPPED", msgs[0])
        p = save_checkpoint({str(tmp_path / "c")!r}, 2, {{"model": {{"w": torch.arange(10.0)}}}}, {{}})
        groups, meta = load_checkpoint(p)
        assert torch.equal(groups["model"]["w"], torch.arange(10.0))
        print("ENTRY", sorted(meta["files"]["model.safetensors"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SKIPPED" in r.stdout and "xxhash package is not installed" in r.stdout
    assert "ENTRY ['chunk', 'crc32', 'size']" in r.stdout
    assert find_latest_valid(tmp_path / "c").step == 2  # and this side, with xxhash, reads it
