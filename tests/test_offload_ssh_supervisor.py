"""Issue 15 through the real Supervisor (tests/harness.py: fake time, the real store, runner and
policies): an SSH box at its boundary (a fake backend named "ssh"), the daemon's own handling of
what the box does: status naming the host, refused credentials, the budget, a dropped
connection, a killed remote job. The real sshd is in test_offload_ssh*.py."""

from __future__ import annotations

import asyncio

from daemon.cloud.offload.base import OffloadError, RemoteStatus, UploadResult
from daemon.cloud.offload.sshlink import SshAuthError
from daemon.cloud.offloader import Offloader
from daemon.policy.states import State
from daemon.web.statusfmt import render
from tests.harness import Behaviour, Harness, config

HOST = "10.0.0.5"
REFUSED = f"ssh gpu@{HOST}:22: authentication failed: the box refused /keys/bad"


def run(coro):
    return asyncio.run(coro)


class Box:
    """A rented box at its boundary. ``key``: "bad" refuses us; ``polls``: scripted poll
    results (an exception is raised), then ``running`` forever."""

    def __init__(self, key: str = "good", polls: list | None = None):
        self.key, self.polls = key, list(polls or [])
        self.uploads = self.launched = self.cancelled = self.pulled = 0
        self.remembered: list[str] = []
        self.last_state: str | None = None

    def upload(self, key, ckpt, files):
        self.uploads += 1
        if self.key == "bad":
            raise SshAuthError(REFUSED)
        return UploadResult(1, 0.1)

    def launch(self, key, spec):
        self.launched += 1
        return f"ssh:{HOST}:22:{key}:{1000 + self.launched}:1"

    def remember(self, call_id, key):
        self.remembered.append(call_id)

    def poll(self, call_id):
        got = self.polls.pop(0) if self.polls else RemoteStatus(state="running", step=50, total_steps=100000,
                                                                 loss=0.5, steps_per_s=20.0)
        if isinstance(got, Exception):
            raise got
        self.last_state = got.state
        return got

    def cancel(self, call_id):
        self.cancelled += 1
        self.polls[:0] = [RemoteStatus(state="cancelled", step=50)]  # the runner TERMed: settled

    def pull(self, key, call_id, dest):
        self.pulled += 1
        return dest

    def describe(self):  # what SshBackend.describe() says, from the link
        return {"backend": "ssh", "host": f"gpu@{HOST}:22", "connected": True,
                "remote_state": self.last_state, "price_usd_per_h": 0.69}


def ssh_cfg(tmp_path, **offload):
    return config(tmp_path, offload={"backends": ["ssh"], "budget_usd": 50.0, "remote_steps_per_s": 20.0,
                                     "ssh": {"host": HOST, "user": "gpu", "key_file": "/keys/bad",
                                             "price_usd_per_h": 0.69}, **offload})


def test_ssh_status_names_the_box_not_modals_gpu_in_json_text_reason_and_estimate(tmp_path):
    async def go():
        box = Box()
        h = Harness(tmp_path, ssh_cfg(tmp_path), {"trainer": Behaviour(trainer=True, steps=100000)},
                    backends={"ssh": box})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE and s.current.remote.remote is not None)
        st = sup.face.snapshot
        assert st["cloud"]["remote"]["host"] == f"gpu@{HOST}:22"
        assert st["cloud"]["remote"]["remote_state"] == "running"
        text = render(st)
        cloud = [line for line in text.splitlines() if line.startswith("cloud")]
        assert cloud and f"ssh gpu@{HOST}:22 (running)" in cloud[0] and "A100" not in text, text
        assert any(f"-> remote: running on ssh gpu@{HOST}:22" in m for m in h.events("state"))
        assert any(f"job moved to ssh gpu@{HOST}:22" in m for m in h.events("offloaded"))
        [est] = h.events("offload_estimate")
        assert f"to ssh gpu@{HOST}:22" in est and "A100" not in est
        # priced at the box's $0.69/h, not Modal's A100 price: (120 s start-up + steps / 20) x 0.69
        left = 100000 - 3
        want = (120 + left / 20.0) / 3600 * 0.69
        assert abs(st["cloud"]["estimate_usd"] - round(want, 2)) <= 0.011, st["cloud"]["estimate_usd"]
    run(go())


def test_ssh_bad_credentials_keep_the_job_local_ask_once_and_a_live_key_edit_tries_again(tmp_path):
    """A refused key: the job stays on the local GPU, the box is not asked again every poll (a
    deadline keeps giving a reason to offload), the reason is in status; saving a new
    [offload.ssh] key_file rebuilds the backend and the next attempt reaches the box."""
    async def go():
        cfg = ssh_cfg(tmp_path)
        cfg["schedule"]["deadline_after_s"] = 60.0  # 100000 steps at 1/s: the ETA misses it
        built: list[Box] = []

        def build(name, c, run_id):
            built.append(Box(key="good" if "good" in str(c["offload"]["ssh"]["key_file"]) else "bad"))
            return built[-1]
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)})
        h.parts.offloader = Offloader(cfg, build=build)
        sup = await h.open()
        await h.run(60, until=lambda s: h.events("offload_failed"))
        [failed] = h.events("offload_failed")
        assert "authentication failed" in failed and "stays on the local GPU" in failed
        await h.run(600, dt=1.0)  # ten minutes later, still past the deadline
        assert sup.state == State.RUNNING and sup.run["backend"] == "local"
        assert h.factory.procs[-1].returncode is None  # the local job trains
        assert len(built) == 1 and built[0].uploads == 1  # asked once, not every poll
        assert "authentication failed" in sup.face.snapshot["cloud"]["problem"]
        refused = await h.command("offload")  # forcing it says why instead of trying blind
        assert not refused["ok"] and "authentication failed" in refused["message"]
        new = ssh_cfg(tmp_path)
        new["offload"]["ssh"]["key_file"] = "/keys/good"  # the user saves a new key
        fut = sup.submit("reconfigure", (new, ["offload.ssh"], []))
        await h.run(60, until=lambda s: s.state == State.REMOTE)
        assert fut.result()["ok"] and sup.state == State.REMOTE
        assert len(built) == 2 and built[1].launched == 1  # a new backend, with the new key
        assert any("ssh: config changed, will be tried again" in m for m in h.events("offload"))
    run(go())


def test_ssh_refused_stops_only_ssh_the_next_backend_is_still_tried(tmp_path):
    async def go():
        bad, other = Box(key="bad"), Box()
        cfg = ssh_cfg(tmp_path, backends=["ssh", "local"])
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)},
                    backends={"ssh": bad, "local": other})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        assert sup.state == State.REMOTE and sup.run["remote_backend"] == "local" and other.launched == 1
        assert any("(after ssh failed)" in m for m in h.events("offloaded"))
        assert h.parts.offloader.usable == ["local"] and "ssh" in h.parts.offloader.refused
    run(go())


def test_ssh_budget_reached_mid_run_cancels_the_box_brings_the_checkpoint_home_and_goes_on_locally(tmp_path):
    async def go():
        box = Box()
        # $3600/h = $1/s against a $5 budget: cut off about 5 s into the remote run
        cfg = ssh_cfg(tmp_path, budget_usd=5.0)
        cfg["offload"]["ssh"]["price_usd_per_h"] = 3600.0
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)}, backends={"ssh": box})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        await h.run(60, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING and len(h.factory.procs) == 2  # the local job again
        assert box.cancelled == 1 and box.pulled == 1
        assert any("budget $5.00 reached" in m for m in h.events("budget"))
        assert any("remote run cancelled: budget reached" in m for m in h.events("offload"))
        assert sup.run["backend"] == "local"
        assert 5.0 <= sup.run["cloud_cost_usd"] <= 5.0 + 2.5  # polled every 2 s at $1/s
        again = await h.command("offload")  # forced, with the budget spent: refused, said why
        assert not again["ok"] and "spent its cloud budget ($5.00)" in again["message"]
        await h.run(10)
        assert box.launched == 1
    run(go())


def test_ssh_connection_dropped_keeps_the_remote_run_and_a_restarted_daemon_reattaches(tmp_path):
    async def go():
        drop = OffloadError(f"ssh gpu@{HOST}:22: connection lost (Connection reset)", retryable=True)
        box = Box(polls=[RemoteStatus(state="running", step=10, total_steps=100000)] + [drop] * 5)
        cfg = ssh_cfg(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=100000)}
        h = Harness(tmp_path, cfg, beh, backends={"ssh": box})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        await h.run(4, dt=0.5)
        assert sup.state == State.REMOTE and "connection lost" in sup.face.snapshot["cloud"]["problem"]
        await h.run(90, dt=0.5)  # the link is back (seen within the backoff): the same remote run
        assert sup.state == State.REMOTE and sup.face.snapshot["cloud"]["problem"] is None
        assert box.launched == 1 and box.cancelled == 0
        call = sup.run["remote_call_id"]
        # the daemon dies (kill -9) and starts again: a new backend object re-attaches by the id
        box2 = Box()
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store, backends={"ssh": box2})
        sup2 = await h2.open()
        await h2.run(5)
        assert sup2.state == State.REMOTE and box2.remembered == [call] and box2.launched == 0
        assert any(f"re-attaching to remote call {call} on ssh" in m for m in h2.events("offload"))
        assert not h2.factory.procs  # no local job started beside the remote one
    run(go())


def test_ssh_remote_job_killed_is_relaunched_from_the_box_checkpoint(tmp_path):
    async def go():
        killed = RemoteStatus(state="preempted", step=40, error="job killed by signal 9")
        box = Box(polls=[RemoteStatus(state="running", step=40, total_steps=100000), killed])
        h = Harness(tmp_path, ssh_cfg(tmp_path), {"trainer": Behaviour(trainer=True, steps=100000)},
                    backends={"ssh": box})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        first = sup.run["remote_call_id"]
        await h.run(10)
        assert sup.state == State.REMOTE and box.launched == 2 and box.uploads == 1  # no new upload
        assert sup.run["remote_call_id"] != first and sup.run["remote_call_id"] in box.remembered
        assert any("preempted at step 40; relaunched from the remote newest checkpoint" in m
                   for m in h.events("preempted"))
    run(go())


def test_cloud_fault_a_job_oom_killed_on_the_box_uses_its_limit_across_a_restart_then_falls_back(tmp_path):
    """Issue 27 (10, 11): an OOM-killed job was "preempted" and relaunched forever, and no count
    survived a daemon restart. Now the job's own deaths count apart (policy.remote.MAX_JOB_DEATHS,
    per backend, in the run's remote_state): killed once, the daemon restarts, killed three more
    times: the limit is reached and the run falls back with the reason."""
    from daemon.policy.remote import MAX_JOB_DEATHS

    oom = RemoteStatus(state="preempted", step=40, cause="job",
                       error="the box's kernel OOM-killed the job (it needs more memory than the box has)")
    running = RemoteStatus(state="running", step=40, total_steps=100000)

    async def go():
        box = Box(polls=[running, oom])
        cfg = ssh_cfg(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=100000)}
        h = Harness(tmp_path, cfg, beh, backends={"ssh": box})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(30, until=lambda s: s.state == State.REMOTE)
        await h.run(10, until=lambda s: box.launched == 2)
        assert box.launched == 2 and sup.state == State.REMOTE  # relaunched once
        box2 = Box(polls=[running, oom, running, oom, running, oom])
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store, backends={"ssh": box2})
        sup2 = await h2.open()  # the daemon restarted: the count did not start over
        await h2.run(120, until=lambda s: s.state == State.RUNNING)
        assert sup2.state == State.RUNNING, h2.events()
        assert box2.launched == MAX_JOB_DEATHS - 1  # 1 before the restart + 2 after = 3 relaunches
        assert any(f"died {MAX_JOB_DEATHS + 1} times" in m and "OOM-killed" in m and "back to the local GPU" in m
                   for m in h2.events("offload_failed")), h2.events("offload_failed")
    run(go())
