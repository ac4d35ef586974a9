"""Progress from output: each preset on output as the real tools print it (nanoGPT's train.py,
Hugging Face Trainer's ProgressCallback on a pipe, tqdm, Lightning's TQDMProgressBar), fed into
the daemon's real JobFacts so step, loss, rate, ETA and steps lost come out for an unmodified
script."""

from __future__ import annotations

import pytest

from daemon.job.outputprogress import PRESETS, OutputProgress, PatternError, compile_pattern
from daemon.job.status import JobFacts
from daemon.state import config as config_mod


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# nanoGPT train.py, as printed (the first iter's mfu is -100.00% before it has an estimate)
NANOGPT = """\
tokens per iteration will be: 8,192
found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)
Initializing a new model from scratch
number of parameters: 10.65M
step 0: train loss 4.2874, val loss 4.2823
iter 0: loss 4.2649, time 12053.69ms, mfu -100.00%
iter 10: loss 3.1462, time 84.31ms, mfu 4.45%
iter 20: loss 2.7322, time 83.93ms, mfu 4.45%
iter 30: loss 2.6184, time 84.02ms, mfu 4.45%
"""


def test_nanogpt_iter_lines_become_progress_records_and_step_lines_evals():
    clock = Clock()
    op = OutputProgress("nanogpt", clock, total_steps=5000)
    recs = []
    for line in NANOGPT.splitlines():
        clock.t += 1.0
        if (r := op.feed(line)) is not None:
            recs.append(r)
    assert [r["kind"] for r in recs] == ["eval", "progress", "progress", "progress", "progress"]
    assert recs[0]["metrics"] == {"train_loss": 4.2874, "val_loss": 4.2823} and recs[0]["step"] == 0
    assert recs[1] == {"kind": "progress", "t": 1006.0, "step": 0, "total_steps": 5000, "loss": 4.2649,
                       "metrics": {"time_ms": 12053.69}}  # no mfu while nanoGPT prints -100
    assert recs[2]["metrics"] == {"time_ms": 84.31, "mfu_pct": 4.45}
    assert [r["step"] for r in recs[1:]] == [0, 10, 20, 30]


def test_nanogpt_output_drives_jobfacts_step_loss_rate_eta_and_steps_lost():
    """The issue's symptom: 'step ?/?', null loss/ETA, steps_lost 0 for an unmodified script."""
    clock = Clock(0.0)
    op = OutputProgress("nanogpt", clock, total_steps=1000)
    facts = JobFacts()
    facts.observe({"kind": "start", "t": 0.0, "step": 0})
    for i in range(0, 310, 10):
        clock.t = i / 10.0  # 10 iters a second
        facts.observe(op.feed(f"iter {i}: loss {3.0 - i / 1000:.4f}, time 100.00ms, mfu 4.45%"))
    assert facts.step == 300 and facts.total_steps == 1000 and facts.loss == pytest.approx(2.7)
    assert facts.steps_per_s == pytest.approx(10.0) and facts.eta_s() == pytest.approx(70.0)
    # killed; the adopted checkpoint was at 250: the restart's start record says so
    facts.observe({"kind": "start", "t": 40.0, "step": 250})
    clock.t = 41.0
    facts.observe(op.feed("iter 250: loss 2.7500, time 100.00ms, mfu 4.45%"))
    assert facts.steps_lost == 50 and facts.step == 250


def test_a_nan_loss_reaches_the_record_as_a_float_the_watchdog_counts():
    op = OutputProgress("nanogpt", Clock())
    r = op.feed("iter 40: loss nan, time 84.02ms, mfu 4.45%")
    assert r["step"] == 40 and r["loss"] == "nan"  # progress.jsonl's marker, as the watchdog expects


# Hugging Face Trainer on a pipe: the bar (stderr) redraws with \r; ProgressCallback.on_log
# prints str(logs) through tqdm.write, which clears the bar ("\r" + spaces + "\r") first.
HF_BAR = "{pct:3d}%|{bar}| {n}/500 [00:{s:02d}<00:45,  9.87it/s]"


def _hf_bar(n: int) -> str:
    filled = n * 10 // 500
    return "\r" + HF_BAR.format(pct=n * 100 // 500, bar="█" * filled + " " * (10 - filled), n=n, s=n // 10)


def test_hf_dict_loss_takes_the_step_of_the_training_bar_and_eval_bars_are_ignored():
    clock = Clock()
    op = OutputProgress("hf", clock)
    stream = (_hf_bar(0) + _hf_bar(1) + _hf_bar(49) + _hf_bar(50) + "\r" + " " * 60 + "\r"
              + "{'loss': 2.3456, 'grad_norm': 1.234, 'learning_rate': 4.5e-05, 'epoch': 0.1}\n"
              + _hf_bar(50) + _hf_bar(51)
              # evaluation: a second bar with its own total, then the eval dict
              + "\n\r  0%|          | 0/13 [00:00<?, ?it/s]\r 46%|████▌     | 6/13 [00:00<00:00, 55.1it/s]"
              + "\r" + " " * 60 + "\r"
              + "{'eval_loss': 2.1, 'eval_runtime': 0.25, 'eval_samples_per_second': 412.0, 'epoch': 0.1}\n"
              + _hf_bar(100) + "\n")
    recs = [r for line in stream.split("\n") if (r := op.feed(line))]
    prog = [r for r in recs if r["kind"] == "progress"]
    assert prog[0]["step"] == 50 and prog[0]["total_steps"] == 500 and prog[0]["loss"] == 2.3456
    assert prog[0]["epoch"] == 0.1 and prog[0]["metrics"]["learning_rate"] == 4.5e-05
    assert [r["step"] for r in prog] == [50, 51, 100]  # the 6/13 eval bar never became a step
    ev = [r for r in recs if r["kind"] == "eval"]
    assert ev == [{"kind": "eval", "t": 1000.0, "step": 51, "epoch": 0.1,
                   "metrics": {"val_loss": 2.1, "eval_runtime": 0.25, "eval_samples_per_second": 412.0}}]


def test_hf_newer_transformers_print_numbers_as_strings_and_the_summary_adds_no_step():
    op = OutputProgress("hf", Clock())
    op.feed(_hf_bar(10))
    r = op.feed("{'loss': '2.303', 'grad_norm': '0.9876', 'learning_rate': '4.9e-05', 'epoch': '0.02'}")
    assert r["step"] == 10 and r["loss"] == 2.303 and r["epoch"] == 0.02
    assert op.feed("{'train_runtime': 60.5, 'train_samples_per_second': 16.5, "
                   "'train_steps_per_second': 2.06, 'train_loss': 2.2, 'epoch': 1.0}") is None


def test_tqdm_redraws_in_one_line_use_the_last_complete_bar_and_postfix_metrics():
    op = OutputProgress("tqdm", Clock())
    line = ("\r  0%|          | 0/1000 [00:00<?, ?it/s]"
            "\r 12%|█▏        | 120/1000 [00:10<01:20, 11.2it/s, loss=2.31, lr=0.0003]"
            "\r 12%|█▏        | 121/1000 [00:10<01:2")  # torn mid-redraw: not complete
    r = op.feed(line)
    assert r["step"] == 120 and r["total_steps"] == 1000 and r["loss"] == 2.31
    assert r["metrics"] == {"loss": 2.31, "lr": 0.0003}
    assert op.feed("\r 12%|█▏        | 120/1000 [00:10<01:20, 11.2it/s, loss=2.31, lr=0.0003]") is None


def test_tqdm_feed_chunk_waits_for_an_unfinished_segment():
    op = OutputProgress("tqdm", Clock())
    assert op.feed_chunk("\r 50%|█████     | 5/10 [00:05<00:0") == []
    recs = op.feed_chunk("5,  1.00it/s]\r 60%|██████    | 6/10 [00:06<00:04,  1.00it/s]\r")
    assert [r["step"] for r in recs] == [6]  # both redraws in one \n-line: the last counts


def test_lightning_bar_gives_a_global_step_across_epochs_and_train_loss():
    op = OutputProgress("lightning", Clock(), total_steps=300)
    a = op.feed("Epoch 0:  45%|████▌     | 45/100 [00:10<00:12,  4.50it/s, v_num=0, train_loss=2.310]")
    b = op.feed("\rEpoch 1:  10%|█         | 10/100 [00:02<00:20,  4.48it/s, v_num=0, train_loss=1.870, "
                "val_loss=1.950]")
    assert (a["step"], a["loss"], a["epoch"], a["total_steps"]) == (45, 2.31, 0.0, 300)
    assert a["metrics"] == {"train_loss": 2.31}
    assert (b["step"], b["loss"]) == (110, 1.87) and b["metrics"]["val_loss"] == 1.95
    assert op.feed("Validation DataLoader 0:  50%|█████     | 5/10 [00:00<00:00, 20.1it/s]") is None


def test_a_user_regex_with_named_groups_gives_step_total_loss_and_metrics():
    op = OutputProgress(r"step (?P<step>\d+)/(?P<total>\d+) loss=(?P<loss>\S+) acc=(?P<acc>[\d.]+)", Clock())
    r = op.feed("[12:00:01] step 40/800 loss=1.25 acc=0.61")
    assert (r["step"], r["total_steps"], r["loss"], r["metrics"]) == (40, 800, 1.25, {"acc": 0.61})
    assert op.feed("unrelated line") is None


def test_a_bad_pattern_is_refused_naming_why():
    with pytest.raises(PatternError, match="neither a preset"):
        compile_pattern("iter (?P<step>\\d+")
    with pytest.raises(PatternError, match="no named groups"):
        compile_pattern(r"iter \d+")
    assert set(PRESETS) >= {"nanogpt", "hf", "tqdm", "lightning"}


def test_config_validates_progress_pattern_naming_the_key():
    base = {"job": {"command": ["python", "train.py"]}}
    assert config_mod.validate(base | {"job": base["job"] | {"progress_pattern": "hf"}})["job"][
        "progress_pattern"] == "hf"
    with pytest.raises(config_mod.ConfigError, match="job.progress_pattern") as e:
        config_mod.validate({"job": base["job"] | {"progress_pattern": "nanogtp"}}, "c.toml")
    assert e.value.key == "job.progress_pattern"


def test_the_readme_your_own_script_examples_are_valid_configs_with_existing_presets():
    import re
    import tomllib

    from tests.helpers import ROOT

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own script"):]
    section = section[:section.index("\n## ", 5)]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    patterns = [config_mod.validate(tomllib.loads(b), "README.md")["job"]["progress_pattern"] for b in blocks]
    assert patterns == ["nanogpt", "hf"]


def test_last_logged_step_reads_the_logs_tail_and_skips_its_cut_first_line(tmp_path):
    from daemon.job.outputprogress import last_logged_step
    log = tmp_path / "job.log"
    assert last_logged_step(log, OutputProgress("nanogpt")) is None  # no log yet
    log.write_text("".join(f"iter {i}: loss 2.0, time 10.00ms, mfu 4.00%\n" for i in range(0, 400, 10)))
    assert last_logged_step(log, OutputProgress("nanogpt")) == 390
    # only the last bytes are read; the first line of that tail may be cut mid-number: skipped
    last = len("iter 390: loss 2.0, time 10.00ms, mfu 4.00%\n")
    assert last_logged_step(log, OutputProgress("nanogpt"), tail_bytes=last + 3) == 390
    assert last_logged_step(log, OutputProgress("nanogpt"), tail_bytes=last - 4) is None  # its only line is cut: skipped
    log.write_text("warming up\n")
    assert last_logged_step(log, OutputProgress("nanogpt")) is None
