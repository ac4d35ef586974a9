"""Issue 27 (5): what one Modal poll costs late in a long run. The real ModalBackend on the real
SDK objects, Modal's network boundary faked (tests/modal_faults.py) so the bytes the volume
hands out are counted; the volume holds what the remote body leaves at step 50,000: a 50,000
record progress.jsonl and the run/summary.json it rewrites at each commit.

    .venv/bin/python bench/cloud_poll_bench.py

Compared: the poll as it is (the summary) and as it was (the whole progress.jsonl, parsed).
Results go to bench/results/cloud_poll.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from daemon.cloud.offload.base import progress_summary  # noqa: E402
from daemon.cloud.offload.modal_backend import ModalBackend, volume_name  # noqa: E402
from daemon.state import config as config_mod  # noqa: E402
from tests.harness import write_checkpoint  # noqa: E402
from tests.modal_faults import Call, Cloud  # noqa: E402

STEP = 50_000
POLLS = 50


class _Patch:  # the little of pytest's monkeypatch the fault layer uses
    def __init__(self) -> None:
        self.undo: list = []

    def setenv(self, k: str, v: str) -> None:
        os.environ[k] = v  # a bench process: left set

    def setattr(self, obj, name: str, value) -> None:
        old = obj.__dict__[name] if name in getattr(obj, "__dict__", {}) else getattr(obj, name)
        self.undo.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)


def main() -> int:
    with tempfile.TemporaryDirectory() as td:
        cloud = Cloud(Path(td) / "modal", lambda: STEP / 10.0, rate=10.0, interval=1000)
        cloud.install(_Patch())
        vol = cloud.vol(volume_name("bench"))
        (vol / "run").mkdir(parents=True)
        with open(vol / "run/progress.jsonl", "w") as f:
            for s in range(1, STEP + 1):
                f.write(json.dumps({"t": 1.7e9 + s, "kind": "progress", "step": s, "total_steps": 100_000,
                                    "loss": 1.0 / s, "steps_per_s": 10.0, "samples_per_s": 80.0,
                                    "epoch": 0, "metrics": {}}) + "\n")
        write_checkpoint(vol / "ckpt/step_000000000", 0)
        cloud.calls["fc-0001"] = Call("fc-0001", vol, 0.0, 0, 100_000, 10.0, 1000, 20.0)
        b = ModalBackend(config_mod.defaults()["offload"] | {"backend": "modal"})
        b.remember("fc-0001", "bench")
        b.poll("fc-0001")  # the checkpoints up to step 50,000 are written on the first touch
        b.bytes_read = 0
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(POLLS):
            st = b.poll("fc-0001")
        now_cpu, now_wall = (time.process_time() - c0) / POLLS, (time.perf_counter() - t0) / POLLS
        assert st.step == STEP, st
        now_bytes = b.bytes_read / POLLS
        # as it was: the whole file read and parsed every poll
        c0 = time.process_time()
        for _ in range(5):
            data = b"".join(cloud._read(vol.name, "run/progress.jsonl"))
            recs = [json.loads(x) for x in data.decode().splitlines()]
            progress_summary(recs)
        old_cpu, old_bytes = (time.process_time() - c0) / 5, len(data)
    out = {"step": STEP, "polls": POLLS, "bytes_per_poll": now_bytes, "cpu_s_per_poll": now_cpu,
           "wall_s_per_poll": now_wall, "old_bytes_per_poll": old_bytes, "old_cpu_s_per_poll": old_cpu,
           "old_mib_per_hour_at_2s": old_bytes * 1800 / 2**20, "loadavg": os.getloadavg()[0]}
    print(json.dumps(out, indent=2))
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/cloud_poll.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if now_bytes < 16 * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
