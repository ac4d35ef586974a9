"""Issue 25: "not restored unless asked" needs a way to ask. `nightshift checkpoints [RUN]` lists a
run's checkpoints with their state and why; `nightshift restore RUN --step N [--force]` puts one
back on purpose, with the daemon stopped (refused, saying to stop it first, while it runs).
Real checkpoint directories, adopted zips shaped like torch.save's, the real CLI entry point."""

from __future__ import annotations

import json
import os

from daemon import cli
from daemon.job import quarantine
from daemon.state.lock import acquire_state_lock
from tests.harness import write_checkpoint
from tests.helpers import write_config
from trainer.format import find_latest_valid, list_checkpoints


def trainer_run(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": ["python", "train.py"]}})
    ns = tmp_path / "ckpt" / "run-1"
    (tmp_path / "state" / "runs" / "1").mkdir(parents=True)  # the run's own dir, as the daemon made it
    for step in (10, 15, 20, 30, 40):
        write_checkpoint(ns / f"step_{step:09d}", step)
    w = ns / "step_000000015" / "weights.bin"
    w.write_bytes(w.read_bytes()[:-3])  # torn
    quarantine.suspect(ns, 25, "written after the last normal loss (step 25) before the "
                       "non-finite loss at step 26")
    return cfg, ns


def test_checkpoints_lists_each_with_its_step_state_and_why(tmp_path, capsys):
    cfg, ns = trainer_run(tmp_path)
    assert cli.main(["checkpoints", "1", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("step ")]
    assert [(r[1], r[7]) for r in rows] == [("40", "suspect"), ("30", "suspect"), ("20", "good"),
                                             ("15", "torn"), ("10", "good")], out
    assert "before the non-finite loss at step 26" in out and "weights.bin" in out
    assert f"trainer checkpoints in {ns}:" in out and " .diverged/step_000000040" in out
    assert "nightshift restore 1 --step N --force" in out
    assert cli.main(["checkpoints", "-c", str(cfg), "--json"]) == 0  # RUN defaults to the newest
    got = json.loads(capsys.readouterr().out)
    assert got["run"] == 1 and [c["state"] for c in got["checkpoints"]][:2] == ["suspect", "suspect"]


def test_restore_puts_a_suspect_checkpoint_back_only_with_force_and_never_a_torn_one(tmp_path, capsys):
    cfg, ns = trainer_run(tmp_path)
    assert cli.main(["restore", "1", "--step", "40", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "is suspect (written after the last normal loss" in err and "add --force" in err
    assert cli.main(["restore", "1", "--step", "15", "--force", "-c", str(cfg)]) == 1
    assert "does not verify" in capsys.readouterr().err
    assert cli.main(["restore", "1", "--step", "99", "-c", str(cfg)]) == 1
    assert "no checkpoint of step 99; it has steps 10, 15, 20, 30, 40" in capsys.readouterr().err
    assert cli.main(["restore", "1", "--step", "40", "--force", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "step 40" in out and "continues run 1" not in out  # no run row: nothing unfinished
    # what the daemon's resume choice and the job's own fallback both take now
    assert find_latest_valid(ns).step == 40 and list_checkpoints(ns)[0].name == "step_000000040"
    assert (ns / ".diverged" / "step_000000030").is_dir()  # still suspect
    # back to an older good one: the newer ones go aside (kept), no --force needed
    assert cli.main(["restore", "1", "--step", "10", "-c", str(cfg)]) == 0
    assert [p.name for p in list_checkpoints(ns)] == ["step_000000010"]
    why = quarantine.reasons(ns)
    assert why["step_000000040"].startswith("set aside: step 10 was restored on purpose")
    assert why["step_000000030"].startswith("suspect: ")


def test_restore_refuses_while_a_daemon_runs_and_says_to_stop_it_first(tmp_path, capsys):
    cfg, ns = trainer_run(tmp_path)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "api.json").write_text(json.dumps({"host": "127.0.0.1", "port": 1, "pid": os.getpid()}))
    assert cli.main(["restore", "1", "--step", "40", "--force", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "the daemon is running" in err and "stop it first" in err
    (state / "api.json").unlink()
    with acquire_state_lock(state):  # a daemon starting, not serving yet
        assert cli.main(["restore", "1", "--step", "40", "--force", "-c", str(cfg)]) == 1
    assert "a daemon holds" in capsys.readouterr().err
    assert list_checkpoints(ns)[0].name == "step_000000020"  # nothing moved
    assert cli.main(["checkpoints", "1", "-c", str(cfg)]) == 0  # listing is read-only: always


def test_restore_chooses_a_suspect_adopted_copy_and_puts_it_in_place(tmp_path, capsys):
    from daemon.job.adopt import Adopter, step_of
    from tests.test_hardening_resume_from import old_ckpt_pt as save_ckpt  # torch.save's shape
    cfg = write_config(tmp_path, {"job": {"command": ["python", "train.py"], "checkpoint_glob": "out/ckpt.pt"}})
    store = tmp_path / "state" / "adopted" / "run-1"
    a = Adopter(tmp_path, "out/ckpt.pt", store)
    p = tmp_path / "out" / "ckpt.pt"
    for it in (100, 200, 300):
        save_ckpt(p, it)
        a.observe()
    a.mark_suspect_after(250, "written after the last normal loss (step 250) before the loss spike at step 260")
    assert cli.main(["checkpoints", "1", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "adopted copies:" in out and "suspect" in out and "v3 out/ckpt.pt" in out
    assert cli.main(["restore", "1", "--step", "300", "-c", str(cfg)]) == 1
    assert "add --force" in capsys.readouterr().err
    save_ckpt(p, 201)  # the file in place is something else now
    assert cli.main(["restore", "1", "--step", "300", "--force", "-c", str(cfg)]) == 0
    assert step_of(p) == 300
    b = Adopter(tmp_path, "out/ckpt.pt", store)  # what the next start's restore does
    assert b.restore().step == 300


def test_restore_for_the_unfinished_run_says_the_next_start_continues_it(tmp_path, capsys):
    from daemon.state.store import Store
    cfg, ns = trainer_run(tmp_path)
    store = Store(tmp_path / "state" / "nightshift.db")
    run_id = store.create_run("job", {}, 1000)
    store.update_run(run_id, state="stopped")
    store.close()
    assert run_id == 1
    assert cli.main(["restore", "1", "--step", "30", "--force", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "`nightshift run` (or starting the service) continues run 1 from it" in out, out
    assert find_latest_valid(ns).step == 30
