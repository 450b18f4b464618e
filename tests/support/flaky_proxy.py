"""A small HTTP proxy in front of the moto S3 server that fails requests on purpose.

Stdlib only. Each request is either forwarded faithfully (method, path, query, headers and body,
ranged GETs, HEAD, multipart, chunked uploads) or failed in one of three ways, like a flaky
object store: a 500 `InternalError`, a 503 `ServiceUnavailable` (S3-style XML error bodies), a
dropped connection (closed without any response, the request never reaches the store: `drop`),
or a lost response (the store did the work, then the connection drops: `lost`).

Faults are seeded and deterministic: whether the n-th request with a given method, path and
Range fails depends only on (seed, method, path, range, n), not on thread timing; failing
requests take the configured kinds in turn, so every kind shows up once a few faults have
happened. `down = True`
fails every request ("storage down"); `trip_when(predicate)` forwards the first request that
matches and then goes down, to take storage away at a precise point of a job. `counts` says how
many requests were forwarded and how many failed of each kind.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "drop", "lost")
# Headers that describe one hop, not the message: never copied across the proxy.
_HOP = frozenset(
    "connection keep-alive proxy-connection proxy-authenticate proxy-authorization te trailer "
    "transfer-encoding upgrade".split()
)
_ERRORS = {
    "500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    "503": (
        503,
        "Service Unavailable",
        "ServiceUnavailable",
        "Service is unable to handle request.",
    ),
}

Predicate = Callable[[str, str, dict], bool]  # (method, path, lower-cased headers) -> bool


class FlakyProxy:
    """`FlakyProxy(upstream, fail_rate=0.25, seed=1)`; use as a context manager or start()/stop()."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_rate: float = 0.0,
        seed: int = 0,
        faults: Sequence[str] = FAULTS,
        down_fault: str = "503",
    ) -> None:
        unknown = set(faults) - set(FAULTS) | ({down_fault} - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.fail_rate = fail_rate
        self.seed = seed
        self.faults = tuple(faults)
        self.down_fault = down_fault
        self.down = False
        self.counts: Counter = Counter()  # forwarded, 500, 503, drop, lost, tripped
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome) for every request
        self._trip: Predicate | None = None
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def faults_injected(self) -> int:
        return sum(self.counts[k] for k in FAULTS)

    def start(self) -> FlakyProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="flaky-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def trip_when(self, predicate: Predicate) -> None:
        """Forward the first request matching `predicate`, then fail everything (down)."""
        with self._lock:
            self._trip = predicate

    def decide(self, method: str, path: str, headers: dict) -> str | None:
        """The fault for this request (None: forward it); counts it."""
        with self._lock:
            if self.down:
                outcome = self.down_fault
            else:
                key = f"{self.seed}|{method}|{path}|{headers.get('range', '')}"
                self._seen[key] += 1
                draw = random.Random(f"{key}|{self._seen[key]}")
                outcome = None
                if self.faults and draw.random() < self.fail_rate:
                    outcome = self.faults[self.faults_injected % len(self.faults)]
                if outcome is None and self._trip is not None and self._trip(method, path, headers):
                    self._trip = None
                    self.down = True  # this request still goes through; the next ones fail
                    self.counts["tripped"] += 1
            self.counts[outcome or "forwarded"] += 1
            self.log.append((method, path, outcome or "forwarded"))
            return outcome


def _handler_for(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, like S3

        def log_message(self, format: str, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers: dropped with the chunked framing
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            body = self._body()  # read whole, so the connection stays usable after a failure
            headers = {k.lower(): v for k, v in self.headers.items()}
            fault = proxy.decide(self.command, self.path, headers)
            if fault in ("500", "503"):
                self._error(*_ERRORS[fault])
                return
            if fault != "drop":
                self._forward(body, respond=fault != "lost")
            if fault in ("drop", "lost"):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def _error(self, status: int, reason: str, code: str, message: str) -> None:
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{self.path.split('?', 1)[0]}</Resource><RequestId>flaky-proxy</RequestId></Error>"
            ).encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-amz-request-id", "flaky-proxy")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _forward(self, body: bytes, respond: bool = True) -> None:
            upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=60
            )
            try:
                upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    if name.lower() not in _HOP and name.lower() not in (
                        "content-length",
                        "expect",
                    ):
                        upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                response = upstream.getresponse()
                payload = response.read()
                if not respond:
                    return
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP and not (
                        name.lower() == "content-length" and self.command != "HEAD"
                    ):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


__all__ = ["FAULTS", "FlakyProxy"]
