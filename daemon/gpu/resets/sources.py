"""Reset sources that produce text lines or markers, each non-blocking and polled by the detector.

A source that lacks permission raises SourceUnavailable with what to add (group, capability),
which the detector reports once: never silently ignored.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Protocol


class Source(Protocol):
    """A kernel-log-like source the detector polls (FileTail, Kmsg, Journal, Uevents,
    Devcoredump); a ``close()`` where one is defined is called at shutdown."""

    name: str

    def lines(self) -> list[str]: ...


class SourceUnavailable(Exception):
    pass


class FileTail:
    """Tail a kernel-log text file (tests, the simulated GPU, or a syslog file) from its end."""

    name = "kernel"

    def __init__(self, path: str | os.PathLike, opener=open):
        self.path = Path(path)
        self.opener = opener
        try:
            self.offset = self.path.stat().st_size
        except FileNotFoundError:
            self.offset = 0
        except PermissionError as e:
            raise SourceUnavailable(f"cannot read the kernel log {self.path}: {e.strerror}; "
                                    "give the daemon read access to it") from None
        self._partial = ""

    def lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0  # rotated or truncated
        if size == self.offset:
            return []
        try:
            with self.opener(self.path, "r", errors="replace") as f:
                f.seek(self.offset)
                data = f.read()
                self.offset = f.tell()
        except PermissionError as e:
            raise SourceUnavailable(f"cannot read the kernel log {self.path}: {e.strerror}") from None
        data = self._partial + data
        parts = data.split("\n")
        self._partial = parts.pop()
        return parts


class Kmsg:
    """/dev/kmsg, read non-blocking from the end (one record per read)."""

    name = "kmsg"

    def __init__(self, path: str = "/dev/kmsg"):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise SourceUnavailable(
                f"cannot read {path} (kernel.dmesg_restrict=1 needs CAP_SYSLOG): add "
                "AmbientCapabilities=CAP_SYSLOG to the unit, or put the daemon's user in the "
                "systemd-journal group so the journal source works") from None
        except FileNotFoundError:
            raise SourceUnavailable(f"{path} does not exist on this machine") from None
        os.lseek(self.fd, 0, os.SEEK_END)  # only what happens from now on

    def lines(self) -> list[str]:
        out = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten records: continue with the next
                    continue
                raise
            if not rec:
                break
            out.append(kmsg_record_line(rec.decode("utf-8", "replace")))
        return out

    def close(self) -> None:
        os.close(self.fd)


def kmsg_record_line(record: str) -> str:
    """A /dev/kmsg record ("6,1234,5678901234,-;msg\\n KEY=value...") as a dmesg line
    ("[ 5678.901234] msg"), keeping the kernel's own timestamp (microseconds since boot)."""
    head, _, msg = record.partition(";")
    msg = msg.split("\n", 1)[0]  # continuation lines " SUBSYSTEM=..." are metadata
    fields = head.split(",")
    try:
        return f"[{int(fields[2]) / 1e6:12.6f}] {msg}"
    except (IndexError, ValueError):
        return msg


class Journal:
    """`journalctl -k -f`: the kernel log through the journal (group systemd-journal or adm)."""

    name = "journal"

    def __init__(self):
        exe = shutil.which("journalctl")
        if not exe:
            raise SourceUnavailable("journalctl is not installed: the journal source is off")
        probe = subprocess.run([exe, "-k", "-n", "1", "-q", "--no-pager"], capture_output=True,
                               text=True, timeout=10)
        err = (probe.stderr or "").lower()
        if "permission" in err or "not seeing messages" in err or "no journal files" in err:
            raise SourceUnavailable("the journal is not readable by this user: add it to the "
                                    "systemd-journal (or adm) group to see kernel GPU reset lines")
        # short-iso-precise: each line starts with its time (the detector groups by it)
        self.proc = subprocess.Popen([exe, "-k", "-f", "-n", "0", "-o", "short-iso-precise",
                                      "--no-pager"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def lines(self) -> list[str]:
        assert self.proc.stdout
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return []
        self._buf += data
        parts = self._buf.split(b"\n")
        self._buf = parts.pop()
        return [p.decode("utf-8", "replace") for p in parts]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


class Uevents:
    """drm change uevents with WEDGED=<method> (kernels 6.14+ send them after a reset)."""

    name = "uevent"
    NETLINK_KOBJECT_UEVENT = 15

    def __init__(self):
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK,
                                      self.NETLINK_KOBJECT_UEVENT)
            self.sock.bind((0, 1))  # group 1: kernel uevents
        except PermissionError:
            raise SourceUnavailable("cannot listen to kernel uevents (AF_NETLINK denied): allow "
                                    "AF_NETLINK in RestrictAddressFamilies") from None
        except OSError as e:
            raise SourceUnavailable(f"kernel uevents unavailable: {e.strerror}") from None

    def lines(self) -> list[str]:
        out = []
        while True:
            try:
                msg = self.sock.recv(65536)
            except BlockingIOError:
                break
            fields = msg.split(b"\0")
            if any(f.startswith(b"WEDGED=") for f in fields) and any(b"drm" in f for f in fields):
                out.append(" ".join(f.decode("utf-8", "replace") for f in fields if f))
        return out

    def close(self) -> None:
        self.sock.close()


class Devcoredump:
    """A new /sys/class/devcoredump/devcdN (or card devcoredump/data) appears after a reset."""

    name = "devcoredump"

    def __init__(self, sysfs_root: str | os.PathLike):
        self.root = Path(sysfs_root)
        self.seen = self._scan()

    def _scan(self) -> set[str]:
        found = set()
        d = self.root / "class" / "devcoredump"
        try:
            found |= {f"devcoredump {d / n}" for n in os.listdir(d) if n.startswith("devcd")}
        except OSError:
            pass
        for card in (self.root / "class" / "drm").glob("card[0-9]*/device/devcoredump/data"):
            found.add(f"devcoredump {card}")
        return found

    def lines(self) -> list[str]:
        now = self._scan()
        new = sorted(now - self.seen)
        self.seen = now
        return [f"{line} (device {self.failing_device(line)})" for line in new]

    def failing_device(self, line: str) -> str:
        """The PCI address of the card that dumped: devcdN/failing_device links to it, a card's
        devcoredump/data sits in its device directory. "unknown" when neither resolves."""
        path = Path(line.split(" ", 1)[1])
        dev = path / "failing_device" if path.name.startswith("devcd") else path.parent.parent
        try:
            return dev.resolve(strict=True).name
        except OSError:
            return "unknown"
