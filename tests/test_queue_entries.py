"""Issue 28: queue entries are checked like the config, printed safely, and added in O(1)."""

from __future__ import annotations

import time

import pytest

from daemon.night.runbook import RunBook
from daemon.policy.queue_entry import entry_problem, safe_text
from daemon.state import config as config_mod
from daemon.state.store import Store
from daemon.web.queuecli import format_queue
from tests.harness import config


@pytest.mark.parametrize("env, says", [({"A=B": "1"}, "not a variable name"), ({"A\0": "1"}, "not a variable name"),
                                       ({"1A": "x"}, "not a variable name"), ({"A": "x\0y"}, "without NUL")])
def test_an_env_the_job_could_never_start_with_is_refused_with_the_fix(env, says):
    """Was: an env name with '=' or a NUL was queued and wedged the daemon in `starting`."""
    problem = entry_problem("x", ["python", "t.py"], env, None)
    assert problem is not None and says in problem and ("--env NAME=value" in problem or "NUL" in problem)


def test_the_boundaries_of_an_entry():
    assert entry_problem(None, ["python"], {"A_1": "", "_B": "x=y"}, 1) is None
    assert "at least 1" in entry_problem(None, ["python"], {}, 0)
    assert "needs a command" in entry_problem(None, [], {}, None)
    assert "NUL" in entry_problem(None, ["python", "a\0b"], {}, None)
    assert "empty" in entry_problem(None, [""], {}, None)
    assert "at most 200" in entry_problem("n" * 201, ["python"], {}, None)
    assert entry_problem("n" * 200, ["python"], {}, None) is None


def test_a_config_queue_entry_is_checked_the_same_way(tmp_path):
    with pytest.raises(config_mod.ConfigError, match=r"queue\[0\].*not a variable name"):
        config(tmp_path, queue=None) if False else config_mod.validate(
            {"job": {"command": ["x"]}, "queue": [{"command": ["x"], "env": {"A=B": "1"}}]}, "<t>")


def test_queue_and_runs_fit_80_columns_and_show_each_runs_own_arguments_in_full():
    """Finding 7: `queue` cut commands at 60 columns (hiding the one argument that differs) and
    `runs` was 157 columns wide."""
    from daemon.web.queuecli import format_runs
    base = ["python", "-m", "trainer.reference", "--device", "cpu", "--d-model", "256", "--layers", "6"]
    q = [{"id": i, "name": n, "command": base + extra, "env": env} for i, (n, extra, env) in enumerate((
        ("baseline", ["--lr", "3e-4"], {}),
        ("lr-hot", ["--lr", "1.0"], {"SEED": "<redacted>"}),
        ("a-very-long-experiment-name", ["--lr", "3e-4", "--warmup", "2000", "--schedule", "cosine",
                                         "--data", "/home/me/data/shakespeare_char/train.bin"], {}),
    ), 1)]
    text = format_queue(q)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "--lr 3e-4 --warmup 2000 --schedule cosine --data /home/me/data/shakespeare_char/train.bin" \
        in " ".join(text.split())  # every argument of its own, in full (wrapped, never cut)
    assert "--device cpu" in text.splitlines()[1] and text.count("--device cpu") == 1  # the common start once
    runs = [{"id": e["id"], "name": e["name"], "state": "succeeded", "command": e["command"], "steps": 3000,
             "best_loss": 1.234567, "best_step": 2900, "climb_step": None if i != 2 else 1050,
             "final_loss": 1.25, "backend": "local", "cost_usd": 0.0, "started": 0.0, "ended": 1.0,
             "changes": [] if i == 1 else ["--lr 1.0 (was 3e-4)"] if i == 2 else
             ["--warmup 2000", "--schedule cosine", "--data /home/me/data/shakespeare_char/train.bin"],
             "changes_against": 1, "curve": [[s, 3.0 - s / 1000] for s in range(0, 3000, 15)]}
            for i, e in enumerate(q, 1)]
    text = format_runs(runs)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert lines[0].startswith("changes against run 1 (baseline)")
    assert "--schedule cosine" in text and "/home/me/data/shakespeare_char/train.bin" in text
    assert any(line.strip().startswith("█") or "▁" in line for line in lines)  # the sparkline
    assert len(format_runs(runs, wide=True).splitlines()[1]) > 80  # --wide: everything on one line


def test_names_print_safely():
    evil = "lr\x1b[2J-hot\u202egnp.exe"
    assert safe_text(evil) == "lr\\x1b[2J-hot\\u202egnp.exe"
    table = format_queue([{"id": 1, "name": evil, "command": ["python", "t.py"], "env": {}}])
    assert "\x1b" not in table and "\u202e" not in table and "\\x1b[2J" in table


def test_adding_an_entry_costs_the_same_at_4700_entries_as_at_the_start(tmp_path):
    """Was: 5-10 adds/s at 4,700 entries (each add listed and returned the whole queue)."""
    cfg = config(tmp_path)

    def book(d):
        store = Store(d / "nightshift.db")
        return store, RunBook(store, cfg, time.time, d / "runs")

    def adds(b: RunBook, n: int) -> float:
        # CPU time of this process: the work an add does, not the disk's fsync waits or the
        # other sessions' load (a shared, busy box)
        t0 = time.process_time()
        for _ in range(n):
            ans, qid = b.add({"command": ["python", "train.py", "--lr", "1e-3"]})
            assert qid is not None, ans
        return (time.process_time() - t0) / n
    empty_store, empty = book(tmp_path / "a")
    full_store, full = book(tmp_path / "b")
    with full_store.db.conn:  # 4,700 entries written at once (their cost is not what is measured)
        full_store.db.conn.executemany(
            "INSERT INTO queue(pos, name, command, env, source, created) VALUES (?,?,?,?,?,?)",
            [(float(i), f"run-{i}", '["python", "train.py"]', "{}", "cli", 0.0) for i in range(1, 4701)])
    first, last = [], []
    for _ in range(3):  # interleaved: the box's load hits both alike
        first.append(adds(empty, 20))
        last.append(adds(full, 20))
    assert min(last) < 2 * min(first) + 0.001, (first, last)  # flat, not growing with the queue
    assert full_store.queue_position(4701) == 4701


def test_the_seeds_table_fits_40_columns_with_the_whole_curve_as_a_sparkline():
    """The seeds' bisection table by hand ("what changed / best loss before the climb / when the
    climb started"), made automatically for a phone."""
    from daemon.web.queuecli import curve_spark, seeds_table
    rise = [[s, 3.0 - s / 500] for s in range(0, 1050, 10)] + [[s, 0.9 + (s - 1050) / 300] for s in range(1050, 3000, 10)]
    runs = [{"id": 1, "name": "baseline", "state": "succeeded", "best_loss": 0.31, "best_step": 1050,
             "climb_step": None, "changes": [], "changes_against": 1, "curve": [[0, 3.0], [100, 1.0]]},
            {"id": 2, "name": "lr-hot-with-a-long-name-that-goes-on", "state": "failed", "best_loss": 0.9,
             "best_step": 1050, "climb_step": 1080, "changes": ["--lr 1.0 (was 3e-4)", "SEED=<redacted>"],
             "changes_against": 1, "curve": rise}]
    text = seeds_table(runs)
    lines = text.splitlines()
    assert all(len(line) <= 40 for line in lines), text
    assert "best 0.9 at step 1050, climb from 1080" in text and "--lr 1.0 (was 3e-4)" in text
    spark = curve_spark(rise, 38)
    assert len(spark) == 38 and spark in text
    low = spark.index(min(spark))  # the whole night: down to the best, then the climb back
    assert 8 <= low <= 16 and spark[0] > spark[low] < spark[-1], spark
