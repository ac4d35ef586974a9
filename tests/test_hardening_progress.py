"""Item 2 of issue 13: a corpus of malformed progress.jsonl lines is skipped, counted and
warned about (rate-limited), never raised; the good lines around them still arrive; every
record that comes out is strict JSON (no NaN/Infinity) and feeds JobFacts without an error."""

from __future__ import annotations

import json
import logging

from daemon.job.progress import MAX_LINE, ProgressTail
from daemon.job.status import JobFacts

GOOD = b'{"t": 1.0, "kind": "progress", "step": 5, "loss": 2.5, "total_steps": 100}'

MALFORMED: dict[str, bytes] = {
    "string step": b'{"kind": "progress", "step": "12"}',
    "missing step": b'{"kind": "progress", "loss": 1.0}',
    "negative step": b'{"kind": "progress", "step": -1}',
    "bool step": b'{"kind": "progress", "step": true}',
    "float step": b'{"kind": "progress", "step": 1.5}',
    "step 2**63": b'{"kind": "progress", "step": 9223372036854775808}',
    "huge number": b'{"kind": "progress", "step": 1' + b"0" * 5000 + b"}",
    "huge float step": b'{"kind": "progress", "step": 1e400}',
    "deep nesting": b'{"kind": "progress", "step": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nesting 6": b'{"kind": "progress", "step": 1, "x": [[[[[1]]]]]}',
    "NaN step": b'{"kind": "progress", "step": NaN}',
    "Infinity rate": b'{"kind": "progress", "step": 3, "samples_per_s": Infinity}',
    "NaN t": b'{"kind": "progress", "step": 3, "t": NaN}',
    "string rate": b'{"kind": "progress", "step": 3, "samples_per_s": "fast"}',
    "string loss": b'{"kind": "progress", "step": 3, "loss": "low"}',
    "metrics not object": b'{"kind": "progress", "step": 3, "metrics": [1, 2]}',
    "metric string": b'{"kind": "eval", "step": 3, "metrics": {"val_loss": "x"}}',
    "unknown kind": b'{"kind": "explode", "step": 1}',
    "kind not string": b'{"kind": 7, "step": 1}',
    "no kind": b'{"step": 1}',
    "non-object list": b"[1, 2, 3]",
    "non-object number": b"42",
    "non-object string": b'"progress"',
    "null": b"null",
    "binary garbage": bytes(range(1, 10)) + b"\xff\xfe\x80\x81",
    "invalid utf-8 in string": b'{"kind": "progress", "step": 1, "note": "\xff"}',
    "truncated": b'{"kind": "progress", "step": 1, "lo',
    "checkpoint without path": b'{"kind": "checkpoint", "step": 10}',
    "checkpoint path number": b'{"kind": "checkpoint", "step": 10, "path": 5}',
    "line over 64 KiB": b'{"kind": "progress", "step": 1, "pad": "' + b"x" * MAX_LINE + b'"}',
}


def _write(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_each_malformed_line_is_skipped_counted_and_the_good_ones_still_arrive(tmp_path):
    f = tmp_path / "progress.jsonl"
    lines = []
    for bad in MALFORMED.values():
        lines += [bad, GOOD]
    _write(f, lines)
    tail = ProgressTail(f)
    recs = tail.read()
    assert len(recs) == len(MALFORMED)
    assert all(r == json.loads(GOOD) for r in recs)
    assert tail.bad_lines == len(MALFORMED)
    assert tail.last_bad == f"line of {len(MALFORMED['line over 64 KiB'])} bytes (at most {MAX_LINE})"


def test_every_malformed_shape_alone_gives_a_reason_and_no_record(tmp_path):
    for name, bad in MALFORMED.items():
        f = tmp_path / "p.jsonl"
        _write(f, [bad])
        tail = ProgressTail(f)
        assert tail.read() == [], name
        assert tail.bad_lines == 1 and tail.last_bad, name


def test_ten_megabyte_line_without_newline_is_dropped_in_bounded_memory(tmp_path):
    f = tmp_path / "progress.jsonl"
    tail = ProgressTail(f)
    with open(f, "wb") as out:
        out.write(b'{"kind": "progress", "step": 1, "pad": "' + b"y" * (10 << 20))
    assert tail.read() == []
    assert len(tail._partial) <= MAX_LINE  # not 10 MB held waiting for a newline
    with open(f, "ab") as out:
        out.write(b'"}\n' + GOOD + b"\n")
    assert tail.read() == [json.loads(GOOD)]
    assert tail.bad_lines == 1


def test_non_finite_loss_and_metrics_become_strict_json(tmp_path):
    f = tmp_path / "progress.jsonl"
    _write(f, [b'{"kind": "progress", "step": 7, "loss": NaN, "loss_max": Infinity, '
               b'"loss_max_step": 6, "metrics": {"val_loss": NaN, "acc": 0.5}}',
               b'{"kind": "progress", "step": 8, "loss": "nan"}'])
    recs = ProgressTail(f).read()
    assert recs[0]["loss"] == "nan" and recs[0]["loss_max"] == "inf"
    assert recs[0]["metrics"] == {"val_loss": None, "acc": 0.5}
    assert recs[1]["loss"] == "nan"  # the trainer's own marker passes
    for r in recs:
        json.dumps(r, allow_nan=False)
    facts = JobFacts()
    for r in recs:
        facts.observe(r)  # the status side takes them without an error
    assert facts.step == 8


def test_warning_is_rate_limited(tmp_path, caplog):
    now = [0.0]
    f = tmp_path / "progress.jsonl"
    _write(f, [b"garbage"] * 50)
    tail = ProgressTail(f, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="daemon.job.progress"):
        tail.read()
        assert len(caplog.records) == 1
        now[0] = 61.0
        with open(f, "ab") as out:
            out.write(b"more garbage\n")
        tail.read()
    assert len(caplog.records) == 2 and "49 more" in caplog.records[1].getMessage()
    assert "skipped in all" in caplog.records[1].getMessage() and tail.bad_lines == 51
