"""/status as text for curl on a phone: 40 columns, one fact per line, whole sentences.

Read at 3 am by someone half awake: the first line says what is happening in one word a person
can tell apart from the others (RUNNING, PAUSED by you, COOLING, CLOUD, STOPPED, DONE...), a
label column of six characters, then the value. Long reasons and messages are wrapped onto
indented lines, never cut mid-word. Nothing that belongs to a live job (rate, ETA, why it is
paused) is shown once the run has stopped, finished or failed.
"""

from __future__ import annotations

import textwrap
import time

from daemon.policy.records import GpuChoice, ResetsStatus, Status, StatusTemps

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 40
LABEL = 6  # "temp  " then the value
FAILED_LINES = 12  # a failed run's card fits a phone screen without scrolling


def sparkline(values: list[float], width: int = 24) -> str:
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))] for v in vals)


def duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _c(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}C"


def shorten_path(word: str, room: int) -> str:
    """A path too long for the card, shortened from the left: the end of a path is what tells
    checkpoints apart (``.../run-1/step_264``). Other words are left for the wrapper to cut."""
    if len(word) <= room or "/" not in word:
        return word
    parts = word.split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(".../" + part + "/" + tail) > room:
            break
        tail = part + "/" + tail
    short = ".../" + tail
    return short if len(short) <= room else "..." + word[-(room - 3):]


def field(label: str, text: str, width: int = WIDTH) -> list[str]:
    """``label`` padded to the label column, ``text`` wrapped under it at word boundaries; a
    path too long for a line shortened from the left, any other over-long word cut, so no
    line is ever wider than the card."""
    room = width - LABEL
    text = " ".join(shorten_path(w, room) for w in str(text).split(" "))
    body = textwrap.wrap(text, room, break_long_words=True, break_on_hyphens=False) or [""]
    return [f"{label:<{LABEL}}{body[0]}"] + [" " * LABEL + line for line in body[1:]]


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?)" else text + "."


def _heat(r: ResetsStatus) -> str | None:
    if not r.get("total"):
        return None
    return {True: "They look heat-related.", False: "They are not heat-related.",
            None: "Too few so far to tell if heat causes them."}[r.get("heat_correlated")]


def headline(st: Status) -> str:
    """The first words of the card ("PAUSED by you", "RUNNING"): also what a control reply says
    the run is now, so the two can never disagree (daemon/web/client.py)."""
    word = st.get("display_state") or str(st.get("state", "?")).upper()
    detail = st.get("display_detail") or ""
    return f"{word} {detail}" if detail and word in ("PAUSED", "CLOUD") else word


def clock(t: float, now: float | None = None) -> str:
    """A wall time as a person reads it at night: 04:10, with the day when it is not within
    the next 24 hours."""
    now = time.time() if now is None else now
    lt = time.localtime(t)
    return time.strftime("%H:%M" if -3600 < t - now < 86400 else "%a %H:%M", lt)


def eta_text(st: Status, now: float | None = None) -> str | None:
    """When it ends, as a clock time and a duration, a range while the prediction is uncertain:
    "ends about 04:10, in 2h13m" / "ends 04:00-04:40, in about 2h13m". One sentence, used by
    the card, the demo's screen, the JSON's eta_text (the dashboard) alike."""
    eta, at = st.get("eta_s"), st.get("eta_at")
    if eta is None or at is None:
        return None
    now = time.time() if now is None else now
    lo_at, hi_at = st.get("eta_low_at") or at, st.get("eta_high_at") or at
    lo, hi = clock(lo_at, now), clock(hi_at, now)
    if hi_at - lo_at > 0.1 * max(eta, 1):
        if lo != hi:
            return f"ends {lo}-{hi}, in about {duration(eta)}"
        # within one minute on the clock (a short run): the range as durations
        span = f"{duration(max(0.0, lo_at - now))}-{duration(max(0.0, hi_at - now))}"
        if span != f"{duration(eta)}-{duration(eta)}":
            return f"ends about {clock(at, now)}, in {span}"
    return f"ends about {clock(at, now)}, in {duration(eta)}"


def render(st: Status, now: float | None = None) -> str:
    now = time.time() if now is None else now
    word = st.get("display_state") or str(st.get("state", "?")).upper()
    head = f"nightshift  {headline(st)}"
    lines = textwrap.wrap(head, WIDTH, subsequent_indent=" " * LABEL, break_long_words=False)
    w = st.get("waiting")
    if w and w.get("for"):  # until when, before anything else: the 3 am question
        about = f", about {duration(w['about_s'])}" if w.get("about_s") is not None else ""
        lines += field("wait", _sentence(f"for {w['for']}{about}"))
    lines += field("job", f"{st.get('job') or '?'} (run {st.get('run_id') or '?'})")
    step, total = st.get("step"), st.get("total_steps")
    pct = f" ({st['progress_pct']:.1f}%)" if st.get("progress_pct") is not None else ""
    note = f"; {st['step_note']}" if st.get("step_note") else ""  # a step that went back says why
    lines += field("step", f"{step if step is not None else '?'} of {total or '?'}{pct}{note}")
    if word == "FAILED" and st.get("failure"):
        return "\n".join(lines + failure_card(st)) + "\n"
    if st.get("loss") is not None:
        lines += field("loss", f"{st['loss']:.4g} {sparkline(st.get('loss_trend') or [], 20)}")
    rate = st.get("steps_per_s")
    if rate:
        lines += field("rate", f"{rate:.2f} steps/s while training")
    if st.get("eta_s") is not None or st.get("eta_why"):
        lines += _eta_lines(st, now)
    t: StatusTemps = st.get("temps") or {}
    lines += field("temp", f"edge {_c(t.get('edge_c'))}, Tctl {_c(t.get('tctl_c'))}")
    gpu: GpuChoice = st.get("gpu") or {}
    if card := gpu.get("card"):  # which GPU those are from, and why in short (the JSON has the whole why)
        why = (gpu.get("why") or "").split(" (")[0].split(";")[0]
        lines += field("gpu", f"{card}, {why}." if why else card)  # "card2" stays lower case
    gov = st.get("governor")
    if gov and gov.get("line"):  # [thermal] governor = "clock": the cap, its speed, its pauses
        lines += field("gov", gov["line"])
    if paused_reason := st.get("paused_reason"):
        lines += field("why", _sentence(paused_reason))
    r: ResetsStatus = st.get("resets") or {}
    resets = (f"{r.get('in_window', 0)} in the last {duration(r.get('window_s'))}, "
              f"{r.get('total', 0)} in this run." if r.get("total") else "none in this run.")
    kr = r.get("kernel_resets_in_window") or 0
    if kr > (r.get("in_window") or 0):  # one incident, several kernel resets: said, not counted
        resets = resets.replace(" in the last", f" ({kr} kernel resets) in the last", 1)
    heat = _heat(r)
    lines += field("reset", resets + (f" {heat}" if heat else ""))
    other = _other_incidents(r)
    if other:
        lines += field("fault", other)
    cloud = st.get("cloud") or {}
    if st.get("backend") == "cloud" or (cloud.get("cost_usd") or 0) > 0:
        remote = cloud.get("remote") or {}
        # named as the Supervisor names it in events (an ssh box by its host, not Modal's gpu)
        where = cloud.get("where") or cloud.get("gpu") or "the cloud"
        if remote.get("remote_state"):
            where += f" ({remote['remote_state']})"
        lines += field("cloud", f"{where}, ${cloud.get('cost_usd') or 0:.2f} of "
                       f"${cloud.get('budget_usd') or 0:.2f} budget")
    else:
        lines += field("where", "the local GPU")
    ck = st.get("checkpoint")
    if ck:
        lines += field("ckpt", f"step {ck['step']}, saved {duration(ck.get('age_s'))} ago")
    ev = st.get("last_event")
    if ev:
        ago = duration(now - ev["t"]) if ev.get("t") else "?"
        lines += field("last", f"{ago} ago: {_sentence(ev.get('message') or ev.get('kind', ''))}")
    if (failure := st.get("failure")) and word == "FAILED":
        lines += field("FAIL", _sentence(failure.splitlines()[0]))
    if cloud_problem := cloud.get("problem"):
        lines += field("cloud", _sentence(cloud_problem))
    for p in st.get("problems") or []:
        lines += field("!", _sentence(p))
    return "\n".join(lines) + "\n"


def _other_incidents(r: ResetsStatus) -> str:
    """Soft recoveries, GPU faults and unattributed incidents: not resets, shown apart."""
    parts = []
    for counts, one, many in ((r.get("faults"), "GPU page fault", "GPU page faults"),
                              (r.get("soft_recoveries"), "soft recovery", "soft recoveries"),
                              (r.get("unattributed"), "incident naming no card", "incidents naming no card")):
        n = (counts or {}).get("total") or 0
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    return (", ".join(parts) + " in this run (not resets).") if parts else ""


def failure_card(st: Status, budget: int = FAILED_LINES - 3) -> list[str]:
    """What a failed run shows under its head, job and step lines, in ``budget`` lines: the
    loss that stopped it, the cause first in one sentence, the job's own error once (cut at a
    sentence or line boundary, never mid-word), the newest good checkpoint, problems, resets. Nothing
    live (rate, ETA, temperatures), and the "failed" event is not repeated: it is the cause."""
    blocks: list[list[str]] = []
    stopped = st.get("loss_stopped")
    if stopped:
        blocks.append(field("loss", f"{stopped['loss']} at step {stopped['step']} stopped the run"))
    elif st.get("loss") is not None:
        blocks.append(field("loss", f"{st['loss']:.4g}"))
    cause, _, error = str(st["failure"]).partition("\n")
    blocks.append(field("FAIL", _clip(_sentence(cause), 4)))
    err = _error_line(error)
    if err and err.rstrip(".") not in cause:
        blocks.append(field("error", _clip(err, 3)))
    ck = st.get("checkpoint")
    if ck:
        blocks.append(field("ckpt", f"step {ck['step']}, saved {duration(ck.get('age_s'))} ago"))
    for p in st.get("problems") or []:
        blocks.append(field("!", _clip(_sentence(p), 3)))
    r: ResetsStatus = st.get("resets") or {}
    if r.get("total"):
        heat = _heat(r)
        blocks.append(field("reset", f"{r.get('in_window', 0)} in the last {duration(r.get('window_s'))}, "
                            f"{r['total']} in this run." + (f" {heat}" if heat else "")))
    out: list[str] = []
    for b in blocks:  # whole blocks only: a card never ends mid-sentence
        if len(out) + len(b) <= budget:
            out += b
    return out


def _error_line(text: str) -> str:
    """The job's own error: the last line that says something (a traceback's exception line)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _clip(text: str, max_lines: int) -> str:
    """``text`` in at most ``max_lines`` wrapped lines: whole sentences while they fit, else
    the first sentence cut at a word with an ellipsis."""
    room = (WIDTH - LABEL) * max_lines - max_lines * 4  # wrapping wastes a few columns per line

    def fits(t: str) -> bool:
        return len(textwrap.wrap(t, WIDTH - LABEL, break_long_words=False)) <= max_lines
    if fits(text):
        return text
    sentences = [x for x in text.replace("; ", ";\n").replace(". ", ".\n").splitlines() if x]
    kept = ""
    for sent in sentences:
        cand = f"{kept} {sent}".strip()
        if not fits(cand):
            break
        kept = cand
    if kept:
        return kept.rstrip(";") + ("" if kept.endswith(".") else " ...")
    return text[:room].rsplit(" ", 1)[0] + " ..."


def _eta_lines(st: Status, now: float | None = None) -> list[str]:
    eta, steady, basis = st.get("eta_s"), st.get("eta_steady_s"), st.get("eta_basis")
    text = eta_text(st, now) if eta is not None else None
    if text is None:
        if eta is not None:  # an older daemon's document: a duration only
            return field("ETA", f"in {duration(eta)}.")
        text = f"unknown: {st.get('eta_why') or 'no rate yet'}."
        if steady is not None:
            text += f" {duration(steady)} of training is left."
        return field("ETA", text)
    if basis == "progress":
        text += f" ({st.get('eta_why') or 'from the progress so far'})."
    elif basis == "duty" and st.get("duty_cycle") is not None:
        text += (f" (it trains {st['duty_cycle']:.0%} of the time; "
                 f"{duration(steady)} at the steady rate).")
    elif basis == "cloud":
        text += " at the cloud's rate."
    else:
        text += " at the steady rate (too early to count pauses)."
    return field("ETA", text)
