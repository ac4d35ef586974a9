"""What the nightshift command does itself, beyond asking the daemon: the offline view from the
store (offline), doctor, the demo and what it compares with (demo, demo_baseline), a run's
checkpoints and restoring one (ckptcmd) and the sensors report (sensors_report). Only daemon.cli
imports it; it may import any other package.
"""
