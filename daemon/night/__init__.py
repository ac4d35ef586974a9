"""The night: the schedule window (schedule), the runs, the queue and their history (runbook,
queueenv: queued runs' env values), notifications (notify) and the divergence watchdog
(divergence). It may import daemon.state (config, the store) and daemon.policy (its rules, the
run states); never the core, which drives it.
"""
