"""The contract between the daemon and the job process, in one torch-free module both import.

Change a name here and both sides change together; ARCHITECTURE.md ("Job protocol") explains
each item. Nothing in this file may import torch: the daemon imports it.
"""

from __future__ import annotations

from trainer.format import ckpt_name, format_skip, parse_skip

__all__ = [
    "ENV_RUN_DIR", "ENV_CHECKPOINT_DIR", "ENV_RESUME", "ENV_CHECKPOINT_INTERVAL",
    "ENV_TOTAL_STEPS", "ENV_SKIP_STEPS", "ENV_CHECKPOINT_KEEP", "ENV_BEST_METRIC", "ENV_SIM_GPU",
    "ONE_SHOT_COMMANDS", "CONTROL_FILE", "PROGRESS_FILE", "RECORD_KINDS", "PROTOCOL_VERSION",
    "ckpt_name", "format_skip", "parse_skip",
]

# Environment the daemon sets for the job.
ENV_RUN_DIR = "NIGHTSHIFT_RUN_DIR"  # where progress.jsonl and control.json live
ENV_CHECKPOINT_DIR = "NIGHTSHIFT_CHECKPOINT_DIR"  # this run's checkpoint namespace
ENV_RESUME = "NIGHTSHIFT_RESUME"  # the checkpoint to resume from, or empty (start fresh)
ENV_CHECKPOINT_INTERVAL = "NIGHTSHIFT_CHECKPOINT_INTERVAL"  # steps between checkpoints
ENV_TOTAL_STEPS = "NIGHTSHIFT_TOTAL_STEPS"
ENV_SKIP_STEPS = "NIGHTSHIFT_SKIP_STEPS"  # "120-170,300-310": batches a rollback skips
ENV_CHECKPOINT_KEEP = "NIGHTSHIFT_CHECKPOINT_KEEP"  # [checkpoint] keep
ENV_BEST_METRIC = "NIGHTSHIFT_BEST_METRIC"  # [checkpoint] best_metric (also keep the best)
ENV_SIM_GPU = "NIGHTSHIFT_SIM_GPU"  # the simulated GPU's directory (simulation only)

PROTOCOL_VERSION = 2  # 2: control.json = desired hold state + numbered one-shot commands
CONTROL_FILE = "control.json"
PROGRESS_FILE = "progress.jsonl"

# control.json: {"hold": bool, "commands": [{"seq": N, "command": C}, ...],
#                "checkpoint_interval": K | null}
# The hold is a state (the job converges on it); commands are acted on once each, by seq, and
# acknowledged with a control_ack record. Nothing is a last-writer slot: a pause and a
# checkpoint asked within the same second both happen.
ONE_SHOT_COMMANDS = ("checkpoint", "exit")

RECORD_KINDS = ("start", "progress", "eval", "checkpoint", "checkpoint_error", "held", "released",
                "control_ack", "done", "exiting", "heartbeat")
