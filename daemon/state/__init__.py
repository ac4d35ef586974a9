"""What the daemon is given and keeps: the config schema and its validation (config), the SQLite
store (store) and the one-daemon-per-state-dir lock (lock). Nearly everything reads it, so it
sits low: it may import daemon.policy (queue entry checks), daemon.job (progress patterns) and
daemon.gpu's simgpu (the simulated card's parameter names), nothing above them.
"""
