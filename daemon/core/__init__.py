"""The core: the Supervisor (supervisor, the only writer of run state), what it says and decides
about the runs it finds at start (opening) and the pieces of its tick: what one tick saw
(observation) and how it is read (observer), the rules that turn it into decisions (decide) and
the decisions as values (decisions, intent), what the job's exit means (exits), the run's
losses: climb, spike (losswatch), what follows a loss spike (spikes), the night's pace for the
ETA (pace), a full disk held until there is room (diskhold), the guarded store writes
(storeguard), the remote run it carries out (remote_run), a user's command as an answer and
decisions (commanding), the start plan: checkpoint, command, environment (starting), a GPU
reset's recovery: cooldown, probe, restart (recovering), when to move to the cloud on its own:
failover and the queue's plan (offloadplan), a script's checkpoints restored around a restart
(restorechain), how a run ends and what follows (lifecycle), the holds carried out on the
job (holds), the clock governor's loop (governorloop), the readings kept between polls
(readings), the job's current attempt (attempt), the progress that outlives the daemon (counters), each event stored, logged and notified (journal), the parts (``Parts``), the optional ones built and reloaded live (parts, reconfig) and the status
face that status and the API read (statusface: built once from the parts, handed the run's state
as a value, publishes the snapshot) and the snapshot itself (statusview, waitview, and
viewsource: what they read of the face, as a Protocol). It may import every package below it: policy, job, gpu, cloud, night, state,
web; never service or commands, which build and drive it.
"""
