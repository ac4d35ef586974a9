"""Runs and the night's queue, as part of the Supervisor (a mixin: the Supervisor stays the
one writer of run state; this file holds one moving part of it).

A run ends as succeeded or failed; then the next waiting queue entry starts as a new run with
its own checkpoint namespace. The queue lives in the store and is edited only here (commands
from the API, queued to the tick). Each run's fingerprint (policy/fingerprint.py, pure) is
stored when it ends; ``runs()`` is the comparison table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.config import REDACTED, public_config
from daemon.queueenv import QueueEnv
from daemon.states import State
from daemon.supervise_remote import _Offload

NIGHT_GAP_S = 60.0  # a queued run starting this soon after the last one ended continues its night


class RunsAndQueue:
    """Mixed into Supervisor; uses its fields (cfg, p, store, run_id, facts, holds, ...)."""

    def _remember_loss(self, step: int, loss: float) -> None:
        self.loss_series.append((step, loss))
        if len(self.loss_series) > 5000:  # a long night: keep every other point
            self.loss_series = self.loss_series[::2]

    def _fingerprint(self) -> Any:
        from daemon.policy.fingerprint import fingerprint
        fp = fingerprint(sorted(self.loss_series))
        self._update_run(best_loss=fp.best_loss, best_step=fp.best_step, climb_step=fp.climb_step,
                         final_loss=fp.final_loss, ended=self.clock())
        return fp

    def _run_ended(self) -> None:
        """The next queued run starts now; with nothing queued, a one-shot daemon leaves."""
        if self.store.queue():
            self._next_run_due = True
        elif self.cfg["daemon"]["exit_when_done"]:
            self.done.set()

    @property
    def _qenv(self) -> QueueEnv:
        """Queued runs' env values (daemon/queueenv.py): never in the store, never served."""
        if getattr(self, "_qenv_obj", None) is None:
            d = self.cfg["daemon"]
            self._qenv_obj = QueueEnv(d.get("_fallback_dir") or d["state_dir"])
            for qid, env in self.store.take_queue_env().items():  # values an older db held
                self._qenv.put(qid, env)
        return self._qenv_obj

    def _queued_env(self, run: dict[str, Any]) -> dict[str, str]:
        """A queued run's env with its values (names whose value is unknown are left out)."""
        names = json.loads(run.get("env") or "{}")
        values = self._qenv.get(run.get("queue_id")) or {}
        return {k: values.get(k, v) for k, v in names.items() if values.get(k, v) != REDACTED}

    def _seed_queue(self) -> None:
        """[[queue]] entries from the config join the stored queue once (a restart re-reads
        the config; an entry already queued, started or removed is not added again)."""
        have = {(q["name"], json.dumps(q["command"])): q["id"] for q in self.store.queue(waiting_only=False)}
        for item in self.cfg.get("queue", []):
            qid = have.get((item["name"], json.dumps(item["command"])))
            if qid is None:
                qid = self.store.queue_add(item["name"], item["command"], item["env"], "config",
                                           item["resume_command"], item["total_steps"])
            self._qenv.put(qid, item["env"])  # the values, from the config, kept out of the store

    def _create_run(self, entry: dict[str, Any] | None) -> None:
        name = entry["name"] if entry else self.cfg["job"]["name"]
        total = (entry or {}).get("total_steps") or self.cfg["job"]["total_steps"]
        found = self._run_on_disk() if entry is None else None
        if found is not None:
            # the database was lost (moved aside as corrupt, or deleted): the newest run on disk
            # keeps its number, so its run dir and checkpoints carry on where they were
            run_id, created = found
            self.run_id = self.store.create_run(name, public_config(self.cfg), total,
                                                run_id=run_id, created=created)
            self._queue_entry = None
            self.event("run", f"continuing run {run_id} from its files: the state database was "
                       "new, the run's directory and checkpoints were not", "warn")
            self.state = State.IDLE
            return
        prev = self.run if self.run_id else {}
        self.run_id = self.store.create_run(name, public_config(self.cfg), total)
        self._queue_entry = entry
        if entry is not None:
            # the next run of a queue belongs to the same night as the one that just ended (a
            # run added to an idle daemon starts a night of its own): deadline_after_s counts
            # from the night's start, not from each run's creation
            night = None
            if prev.get("ended") is not None and self.clock() - float(prev["ended"]) <= NIGHT_GAP_S:
                night = prev.get("night_start") or prev.get("created")
            self._update_run(command=json.dumps(entry["command"]), env=json.dumps(entry["env"]),
                             queue_id=entry["id"], night_start=night)
            self.store.queue_set(entry["id"], state="started", run_id=self.run_id)
        else:
            self._update_run(command=None, env=None)
        self.event("run", f"new run {self.run_id}: {name}"
                   + (f" (queued: {' '.join(entry['command'])})" if entry else ""))
        self.state = State.IDLE

    def _run_on_disk(self) -> tuple[int, float] | None:
        """The newest run that has files but no row (only when the store holds no run at all)."""
        if self.store.latest_run() is not None or self.new_run or self.resume_from:
            return None
        ids: dict[int, float] = {}
        for base, prefix in ((Path(self.cfg["daemon"]["state_dir"]) / "runs", ""),
                             (Path(self.cfg["job"]["checkpoint_dir"]), "run-")):
            try:
                for d in base.iterdir():
                    n = d.name[len(prefix):] if d.name.startswith(prefix) else ""
                    if d.is_dir() and n.isdigit():
                        ids[int(n)] = min(ids.get(int(n), d.stat().st_mtime), d.stat().st_mtime)
            except OSError:
                continue
        if not ids:
            return None
        newest = max(ids)
        return newest, ids[newest]

    def _start_next_run(self, now: float) -> None:
        self._next_run_due = False
        waiting = self.store.queue()
        if not waiting:
            return
        self._create_run(waiting[0])
        self.facts = type(self.facts)()
        self.loss_series = []
        self.failure = None
        self.holds.pop("thermal", None)
        self.interval_steps = None
        self.off = _Offload()
        self.duty = type(self.duty)()  # a new run's duty cycle starts with it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.runner = self.p.make_runner(self.run_dir)
        self.adopter = self.p.make_adopter(self.run_id) if self.p.make_adopter is not None else None
        self.p.offloader.for_run(self.run_id)
        if self.p.divergence is not None:  # a new run's losses owe nothing to the last one's
            from daemon import parts as build
            self.p.divergence = build.divergence(self.cfg)
        if self.holds:
            self._update_run(user_hold=1 if "user" in self.holds else 0)
        self._restart_now(f"next in the queue: {self.job['name']}")

    def runs(self) -> list[dict[str, Any]]:
        """The comparison table (GET /runs, `nightshift runs`), oldest first."""
        from daemon.policy.fingerprint import changes, fingerprint
        rows = self.store.runs()
        queued = [r for r in rows if r.get("queue_id")]
        base = queued[0] if queued else (rows[0] if rows else None)

        def cmd_env(r: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
            if r.get("command"):  # env values compared here, shown redacted (show_values=False)
                return json.loads(r["command"]), self._queued_env(r)
            return list(self.cfg["job"]["command"]), {}
        bcmd, benv = cmd_env(base) if base else ([], {})
        out = []
        for r in rows:
            cmd, env = cmd_env(r)
            best = (r.get("best_loss"), r.get("best_step"), r.get("climb_step"), r.get("final_loss"))
            if r["id"] == self.run_id and r.get("ended") is None:
                fp = fingerprint(sorted(self.loss_series))  # live for the current run
                best = (fp.best_loss, fp.best_step, fp.climb_step, fp.final_loss)
            out.append({
                "id": r["id"], "name": r["name"], "state": r["state"], "command": cmd,
                "changes": [] if base is None or r["id"] == base["id"] else changes(bcmd, benv, cmd, env, show_values=False),
                "steps": r.get("step"), "best_loss": best[0], "best_step": best[1],
                "climb_step": best[2], "final_loss": best[3],
                "backend": r.get("remote_backend") if r.get("remote_backend") else "local",
                "cost_usd": round(float(r.get("cloud_cost_usd") or 0.0), 4),
                "started": r.get("created"), "ended": r.get("ended"),
            })
        return out

    def queue(self) -> list[dict[str, Any]]:
        return [{"id": q["id"], "name": q["name"], "command": q["command"], "env": q["env"],
                 "total_steps": q["total_steps"], "source": q["source"]} for q in self.store.queue()]

    def _queue_command(self, action: str, arg: dict[str, Any]) -> dict[str, Any]:
        waiting = self.store.queue()
        if action == "queue_add":
            command = arg.get("command")
            if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
                return {"ok": False, "message": "a queued run needs a command: nightshift queue add -- python train.py ..."}
            env = arg.get("env") or {}
            name = arg.get("name") or f"run-{len(self.store.queue(waiting_only=False)) + 1}"
            qid = self.store.queue_add(name, command, env, "cli", total_steps=arg.get("total_steps"))
            self._qenv.put(qid, env)  # values kept out of the store (daemon/queueenv.py)
            self.event("queue", f"queued {name!r} (#{qid}): {' '.join(command)}")
            if self.state in (State.SUCCEEDED, State.FAILED) and not self.runner.running:
                self._next_run_due = True  # the daemon was idle: start it now
            return {"ok": True, "message": f"queued {name!r} as #{qid}, position {len(waiting) + 1}",
                    "queue": self.queue()}
        ids = [q["id"] for q in waiting]
        qid = arg.get("id")
        if qid not in ids:
            return {"ok": False, "message": f"no waiting run #{qid} in the queue (waiting: "
                    f"{', '.join(f'#{i}' for i in ids) or 'none'})"}
        if action == "queue_remove":
            self.store.queue_set(qid, state="removed")
            self.event("queue", f"removed #{qid} from the queue")
            return {"ok": True, "message": f"removed #{qid}", "queue": self.queue()}
        if action == "queue_move":
            to = max(1, min(int(arg.get("to") or 1), len(ids)))
            order = [i for i in ids if i != qid]
            order.insert(to - 1, qid)
            for pos, i in enumerate(order, 1):
                self.store.queue_set(i, pos=float(pos))
            self.event("queue", f"moved #{qid} to position {to}")
            return {"ok": True, "message": f"#{qid} is now number {to}", "queue": self.queue()}
        raise AssertionError(action)

    def _restart_now(self, reason: str, resume: str | None = None) -> None:
        self.forced_resume = resume
        self.next_start_at = self.clock()
        self.set_state(State.STARTING, reason)
