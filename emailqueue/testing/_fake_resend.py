"""A local fake of Resend's email API, for tests and local development: :class:`ResendModel`
served over HTTP on 127.0.0.1.

    with FakeResend() as fake:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        httpx.post(f"{fake.url}/emails", json=email, headers=headers)
        assert [e.to for e in fake.accepted] == [["ada@example.com"]]

Run one by hand with ``emailqueue-fake-resend --port 8025`` (or ``python -m emailqueue.testing``):
it logs one line per request, and ``GET /emails`` lists what it accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from ._model import AcceptedEmail, Gate, RecordedRequest, ResendModel

__all__ = ["AcceptedEmail", "FakeResend", "Gate", "RecordedRequest", "main"]

log = logging.getLogger("emailqueue.fake_resend")


class FakeResend(ResendModel):
    """A Resend API on 127.0.0.1, in a daemon thread (the model's records and faults included).

    Args:
        api_key: the only key accepted in ``Authorization: Bearer <key>``.
        host, port: where to listen; port 0 picks a free port (see :attr:`url`).
        latency: seconds to wait before every reply (settable later).
        rate_limit: requests/s allowed across all keys, over a sliding 1 s window
            (rounded down, at least 1); None for no limit (settable later).
        clock: monotonic seconds, for the rate-limit window.
    """

    def __init__(
        self,
        *,
        api_key: str = "re_test_fake",
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(api_key=api_key, latency=latency, rate_limit=rate_limit, clock=clock)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeResend is not running; call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeResend:
        if self._server is not None:
            raise RuntimeError("FakeResend is already running")
        self._stopping.clear()
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeResend", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held requests are released and pending delays cut short."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        self._release_gates()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeResend:
        return self if self._server is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeResend/1.0"
    timeout = 10  # a client that connects and sends nothing cannot keep a thread forever

    def _handle(self) -> None:
        fake = cast(_Server, self.server).fake
        try:
            length = max(0, int(self.headers.get("content-length") or 0))
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = urlsplit(self.path).path
        reply = fake.handle(self.command, path, headers, body, urlsplit(self.path).query)
        if reply.drop:
            log.info(
                "%s %s accepted, connection closed with no reply (%d bytes in)", self.command, path, len(body)
            )
            self.close_connection = True
            return
        log.info("%s %s %d (%d bytes in)", self.command, path, reply.status, len(body))
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request comes from _handle, through logging


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets bursts of parallel clients

    def __init__(self, address: tuple[str, int], fake: FakeResend) -> None:
        super().__init__(address, _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that times out or hangs up mid-reply is part of the job, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None, *, stop: threading.Event | None = None) -> None:
    """``emailqueue-fake-resend``: serve a fake Resend API until Ctrl-C (or ``stop`` is set)."""
    parser = argparse.ArgumentParser(
        prog="emailqueue-fake-resend",
        description="Serve a fake Resend API until Ctrl-C. GET /emails lists what it accepted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--api-key", default="re_test_fake")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    fake = FakeResend(
        api_key=args.api_key, host=args.host, port=args.port, latency=args.latency, rate_limit=args.rate_limit
    )
    stop = stop or threading.Event()
    with fake:
        print(f"Fake Resend at {fake.url} (API key {fake.api_key}); Ctrl-C stops it.", flush=True)
        print(f"  GET {fake.url}/emails lists the emails it accepted.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
