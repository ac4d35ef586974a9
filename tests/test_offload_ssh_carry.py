"""The ssh backend carries an unmodified script like the local and Modal backends do (issue 14),
against a real sshd on loopback: a workdir outside this project, a data dir by manifest, the
adopted checkpoint restored at its relative path before resume_command (the live file was torn
by the last kill), progress parsed from the script's output on the box, the result home at the
path the script reads."""

from __future__ import annotations

import pytest

from daemon.cloud.offload import JobSpec
from daemon.cloud.offload.carry import newest_adopted_dir
from daemon.cloud.offload.ssh import SshBackend
from daemon.job.adopt import step_of
from tests.fixtures.sshd import sshd  # noqa: F401 - the fixture
from tests.fixtures.sshjob import poll_until
from tests.test_offload_local_carry import ARGS, first_night, project


@pytest.mark.slow
def test_ssh_failover_of_an_unmodified_script_with_data_and_the_result_home(sshd, tmp_path):  # noqa: F811
    w, c = project(tmp_path)
    first_night(w, c.adopted_store)
    (w / "out/ckpt.pt").write_bytes((w / "out/ckpt.pt").read_bytes()[:500])  # torn by the last kill
    b = SshBackend(sshd.cfg(), carry=c)
    try:
        b.upload("run1", None, [w / "out/ckpt.pt"])
        assert b.last_sync["work"]["sent"] == 2 and b.last_sync["data/data"]["sent"] == 2
        run = sshd.remote_dir / "runs/run1"
        assert sorted(p.relative_to(run / "work").as_posix() for p in (run / "work").rglob("*")
                      if p.is_file()) == [".gitignore", "train.py"]  # no debug.log, data, checkpoint
        # the newest adopted copy went up whole (the torn live file was sent too, and is replaced)
        assert [p.name for p in (run / "adopted").iterdir()] == [newest_adopted_dir(c.adopted_store).name]
        py = ["python", "train.py", *ARGS, "--max_iters=60"]
        call = b.launch("run1", JobSpec(command=py, resume_command=[*py, "--init_from=resume"],
                                        total_steps=60))
        st = poll_until(b, call, lambda s: s.state != "running", 90, "the run on the box to end")
        assert st.state == "succeeded", st.error
        log = (run / "job.log").read_text()
        assert "Resuming training from out" in log and "data: data/corpus.bin" in log
        assert st.step == 60 and st.total_steps == 60 and st.loss is not None  # parsed from output
        got = b.pull("run1", call, tmp_path / "ckpt-home")
        assert got == w / "out/ckpt.pt" and step_of(got) == 60  # home, at the path the script reads
        (w / "data/extra.bin").write_bytes(b"y" * 100)  # the next night: only this file goes up
        b.upload("run2", None, [])
        assert b.last_sync["data/data"]["sent"] == 1 and b.last_sync["data/data"]["bytes"] == 100
    finally:
        b.close()
