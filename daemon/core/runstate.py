"""The current run's own state, as the Supervisor keeps it: one object, replaced whole when the
queue's next run begins, so nothing of a run leaks into the next by a field forgotten.

What it holds is what starts again with each run: the job's facts (step, losses, checkpoints,
rate), its loss watch (fingerprint, climb watch), the remote run (the offload carried out),
the pace (duty cycle, net rate: the ETA), the checkpoint interval chosen for it, why it failed,
and its own ports -- the job runner for its directory and the adopter of a script's checkpoints
-- made once the run is known (``Supervisor._attach_run``). What outlives a run is not here:
the holds a person or the GPU put on the machine, the resets (the machine's), the attempt (a new
one at each start), the problems shown.

The Supervisor is the one writer of these fields (the run's state); the status views read them.
The one decision carried out here is about this state alone: what the remote run reported
(``Seen``: the run's step, total and loss), handed over by the Supervisor (``carry``), like the
holds' own (holds.py); what the loss watch says of it comes back as decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, assert_never

from daemon.core.decisions import Decision
from daemon.core.losswatch import Acting, LossWatch
from daemon.core.pace import Pace
from daemon.core.remote_run import RemoteRun, Seen
from daemon.job.jobrunner import JobRunner
from daemon.job.status import JobFacts
from daemon.policy.cfgtypes import DivergenceConfig

if TYPE_CHECKING:  # built by parts.py only when [job] checkpoint_glob asks for it
    from daemon.job.adopt import Adopter


@dataclass
class RunState:
    remote: RemoteRun  # the offload carried out (remote_run.py)
    # the job port for the run's directory: None only before the daemon has opened a run
    runner: JobRunner = None  # type: ignore[assignment]
    adopter: Adopter | None = None  # a script's checkpoints kept safe (daemon/job/adopt.py)
    facts: JobFacts = field(default_factory=JobFacts)
    losses: LossWatch = field(default_factory=LossWatch)  # the loss series, the climb watch (losswatch.py)
    pace: Pace = field(default_factory=Pace)  # the duty cycle and the net rate: the ETA's basis (pace.py)
    interval_steps: int | None = None  # the checkpoint interval told to the job (policy/interval.py)
    failure: str | None = None  # why the run failed (its row's ``failure``), said in status
    # the decisions it carries out on itself (``carry``), handed over by Supervisor._apply
    CARRIES: ClassVar = (Seen,)

    def next(self, remote: RemoteRun) -> RunState:
        """The queue's next run's state: all new but the loss watch, which starts a new series and
        climb watch and keeps ``stop_loss`` (status said the previous run's until another
        divergence: ``LossWatch.next_run``)."""
        self.losses.next_run()
        return RunState(remote, losses=self.losses)

    def carry(self, d: Seen, divergence: DivergenceConfig, acting: Acting) -> list[Decision]:
        """What the remote run reported: the run's facts follow it, and its loss joins the run's
        fingerprint (which covers its remote part too) and the climb watch, whose word comes back."""
        if isinstance(d, Seen):
            st, f = d.status, self.facts
            if st.step is not None:
                f.step = st.step
                f.total_steps = st.total_steps or f.total_steps
            if st.loss is None:
                return []
            f.loss = st.loss
            f.losses.append(st.loss)
            return self.losses.note(int(st.step), float(st.loss), divergence, acting) if st.step is not None else []
        assert_never(d)
