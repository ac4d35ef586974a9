"""One SSH connection to the rented box, kept open across calls, for the synchronous backend.

asyncssh is asyncio-only while the backend's methods are synchronous (the daemon runs them in a
worker thread), so the link owns a private event loop on its own thread and every call is a
coroutine submitted to it. The connection is reused (a poll every few seconds must not pay a
handshake each time) and re-opened once when it turns out to be dead, so a dropped connection
costs one reconnect, not an error.

Host keys are checked against known_hosts; an unknown or changed key is refused with what to do.
Trust on first use only with ``accept_new_host_key`` (OpenSSH's accept-new: an unknown host is
recorded, a changed key is still refused). Errors become OffloadError: connection refused, host
unreachable, timeouts and lost connections are retryable; a refused key, a refused host key and
an unreadable key file are SshAuthError/SshHostKeyError (not retryable: retrying cannot help
until the configuration changes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from daemon.cloud.offload.base import OffloadAuthError, OffloadError
from daemon.policy.cfgtypes import SshConfig

if TYPE_CHECKING:  # asyncssh is imported where a link is used: a daemon without ssh never loads it
    from asyncssh import SFTPClient, SSHClientConnection, SSHKey, SSHKnownHosts

T = TypeVar("T")


class SshAuthError(OffloadAuthError):
    """The box refused our key (or we have none to offer)."""


class SshHostKeyError(OffloadAuthError):
    """The box's host key is unknown or changed: refused, never silently trusted."""


def _is_connection_problem(e: BaseException) -> bool:
    import asyncssh
    if isinstance(e, (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable)):
        return False
    if isinstance(e, asyncssh.ProcessError):
        # a command's own outcome: asyncssh.TimeoutError (a command over its timeout) is also an
        # asyncio.TimeoutError, and was taken for a lost connection: the command ran again
        return False
    return isinstance(e, (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError,
                          asyncssh.SFTPConnectionLost, ConnectionError, TimeoutError, socket.gaierror,
                          BrokenPipeError, EOFError))


class SshLink:
    def __init__(self, cfg: SshConfig):
        self.cfg = cfg
        if not cfg["host"]:  # config.validate requires it when the ssh backend is used
            raise ValueError("[offload.ssh] host is not set: name the machine to offload to")
        self.host: str = cfg["host"]
        self.port: int = int(cfg.get("port") or 22)
        self.user: str = cfg.get("user") or getpass.getuser()
        self.known_hosts = Path(cfg.get("known_hosts") or "~/.ssh/known_hosts").expanduser()
        key_file = cfg.get("key_file")
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.timeout_s = float(cfg.get("connect_timeout_s") or 15.0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: SSHClientConnection | None = None
        self._sftp: SFTPClient | None = None  # an SFTP session on _conn, kept: a poll is a few ~1 ms reads
        self._lock: asyncio.Lock | None = None
        self._offered: tuple[SSHKey, list[SSHKey]] | None = None  # the host key the server showed, for the refusal message
        self.connects = 0  # how many connections were opened (status, tests)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    # the private loop ------------------------------------------------------------------------
    def call(self, fn: Callable[[SSHClientConnection], Awaitable[T]], timeout: float | None = None,
             retry: bool = True) -> T:
        """Run ``await fn(connection)`` on the link's loop; reconnect once if the link was dead.

        ``retry=False`` for steps that must not run twice (starting the job)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="nightshift-ssh",
                                            daemon=True)
            self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._call(fn, retry), self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise OffloadError(f"ssh {self.where}: no answer within {timeout:.0f} s",
                               retryable=True) from None

    async def _call(self, fn: Callable[[SSHClientConnection], Awaitable[T]], retry: bool) -> T:
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await fn(conn)
            except Exception as e:  # noqa: BLE001 - classified below
                if not _is_connection_problem(e):
                    raise
                self._drop()
                if attempt == 2 or not retry:
                    raise OffloadError(f"ssh {self.where}: connection lost ({e or type(e).__name__})",
                                       retryable=True) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        async def shut() -> None:
            if self._sftp is not None:
                self._sftp.exit()
                self._sftp = None
            if self._conn is not None:
                self._conn.close()
                try:
                    await asyncio.wait_for(self._conn.wait_closed(), 5)
                except Exception:  # noqa: BLE001 - closing a dead link
                    pass
                self._conn = None
        try:
            asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        except Exception:  # noqa: BLE001
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        loop.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # the connection ----------------------------------------------------------------------------
    def _drop(self) -> None:
        self._sftp = None
        if self._conn is not None:
            self._conn.abort()
        self._conn = None

    async def _connection(self) -> SSHClientConnection:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._sftp = None
            self._conn = await self._open()
            self.connects += 1
            return self._conn

    async def sftp(self, conn: SSHClientConnection) -> SFTPClient:
        """The kept SFTP session on ``conn`` (opening a command channel costs the box a fork and
        a shell start, ~200 ms on a loaded machine; an SFTP read on an open session ~1 ms)."""
        if self._sftp is None:
            self._sftp = await conn.start_sftp_client()
        return self._sftp

    async def _open(self) -> SSHClientConnection:
        import asyncssh
        link = self

        class Client(asyncssh.SSHClient):
            def validate_host_public_key(self, host: str, addr: str, port: int, key: SSHKey) -> bool:
                return link._unknown_host_key(host, addr, port, key)

        # asyncssh.connect's options (its **kwargs are typed object: each is checked there)
        opts: dict[str, object] = {"known_hosts": self._known(),
                                   "connect_timeout": self.timeout_s, "keepalive_interval": 10,
                                   "keepalive_count_max": 3, "client_factory": Client}
        config = self._ssh_config()
        port: int | None = self.port
        if config:
            # what ~/.ssh/config says for this Host counts unless [offload.ssh] says otherwise
            # (the schema's port default, 22, says nothing)
            port = self.port if self.port != 22 else None
            if self.cfg.get("user"):
                opts["username"] = self.user
        else:
            opts["username"] = self.user
        if self.key_file is not None:
            try:
                opts["client_keys"] = [asyncssh.read_private_key(str(self.key_file))]
            except (OSError, asyncssh.KeyImportError) as e:
                raise SshAuthError(f"ssh: cannot read key_file {self.key_file}: {e}; set "
                                   "[offload.ssh] key_file to the private key whose .pub is in "
                                   "the box's ~/.ssh/authorized_keys") from None
            opts["agent_path"] = None
        self._offered = None
        try:
            return await asyncssh.connect(self.host, port, config=config, **opts) if port is not None else \
                await asyncssh.connect(self.host, config=config, **opts)
        except asyncssh.HostKeyNotVerifiable:
            raise SshHostKeyError(self._host_key_message()) from None
        except asyncssh.PermissionDenied:
            key = self.key_file or "the default keys (~/.ssh/id_*, ssh-agent)"
            raise SshAuthError(
                f"ssh {self.where}: authentication failed: the box refused {key}. Put the public "
                f"key ({self.key_file}.pub) in ~{self.user}/.ssh/authorized_keys on the box, or fix "
                "[offload.ssh] user / key_file") from None
        except ConnectionRefusedError:
            raise OffloadError(f"ssh {self.where}: connection refused (the box is down or sshd is "
                               "not running)", retryable=True) from None
        except socket.gaierror as e:
            raise OffloadError(f"ssh {self.where}: cannot resolve the host: {e}", retryable=True) from None
        except (OSError, TimeoutError, asyncssh.Error) as e:
            raise OffloadError(f"ssh {self.where}: cannot connect: {e or type(e).__name__}",
                               retryable=True) from None

    def _ssh_config(self) -> list[str] | None:
        """~/.ssh/config, as ssh reads it, unless ``[offload.ssh] ssh_config = false``."""
        if not self.cfg.get("ssh_config", True):
            return None
        path = Path("~/.ssh/config").expanduser()
        return [str(path)] if path.is_file() else None

    # host keys ---------------------------------------------------------------------------------
    def _known(self) -> SSHKnownHosts:
        import asyncssh
        if self.known_hosts.exists():
            return asyncssh.read_known_hosts(str(self.known_hosts))
        return asyncssh.import_known_hosts("")  # nothing trusted (yet)

    def _host_pattern(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _recorded(self, host: str, addr: str, port: int) -> list[SSHKey]:
        import asyncssh
        if not self.known_hosts.exists():
            return []
        return list(asyncssh.match_known_hosts(str(self.known_hosts), host, addr, port)[0])

    def _unknown_host_key(self, host: str, addr: str, port: int, key: SSHKey) -> bool:
        """Called by asyncssh for a key known_hosts does not trust: record it, maybe accept it."""
        self._offered = (key, self._recorded(host, addr, port))
        if self.cfg.get("accept_new_host_key") and not self._offered[1]:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            line = f"{self._host_pattern()} {key.export_public_key().decode().strip()}\n"
            with open(self.known_hosts, "a") as f:
                f.write(line)
                os.fsync(f.fileno())
            return True
        return False

    def _host_key_message(self) -> str:
        pattern = self._host_pattern()
        if self._offered is None:
            return (f"ssh {self.where}: the host key could not be verified against {self.known_hosts}")
        key, recorded = self._offered
        fp = key.get_fingerprint()
        if recorded:
            old = ", ".join(k.get_fingerprint() for k in recorded)
            return (f"ssh {self.where}: REFUSED: the host key CHANGED. {self.known_hosts} has {old} for "
                    f"{pattern}, the server offered {key.get_algorithm()} {fp}. This can be a "
                    "man-in-the-middle. If the box was re-created, remove the old entry with "
                    f"`ssh-keygen -R '{pattern}' -f {self.known_hosts}` and add the new key "
                    f"after checking its fingerprint with the provider.")
        return (f"ssh {self.where}: REFUSED: the host key is not in {self.known_hosts} (the server "
                f"offered {key.get_algorithm()} {fp}); nightshift does not trust a host on first use. "
                f"Check the fingerprint with the provider, then add it: `ssh-keyscan -p {self.port} "
                f"{self.host} >> {self.known_hosts}` (or set [offload.ssh] accept_new_host_key = true "
                "to record an unknown host's key once).")
