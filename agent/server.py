"""HTTP ``/metrics`` for the agent: prometheus-client's WSGI app on a threading
WSGI server, bound to 127.0.0.1 by default, with optional TLS (certificate and
key files) and optional HTTP basic auth (one user).

Each connection has a thread; a connection beyond ``max_connections`` is closed at
once, a client that sends nothing for ``read_timeout_s``, or has not sent its whole
request head within it (the TLS handshake included), is dropped, and ``accept`` failing for want of file descriptors pauses the accept loop
briefly instead of spinning (logged once a minute)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9400
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_BACKLOG = 128
_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
REALM = "bottleneck-map agent"
log = logging.getLogger("bottleneck_map.agent")

WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class BasicAuth:
    user: str
    password: str

    @classmethod
    def parse(cls, text: str) -> BasicAuth:
        """``user:password`` (the password may contain ':'); raises ValueError otherwise."""
        user, sep, password = text.partition(":")
        if not sep or not user or not password:
            raise ValueError("expected user:password with a non-empty user and password")
        return cls(user, password)

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
        return ok_user and ok_pass


def with_basic_auth(app: WsgiApp, auth: BasicAuth) -> WsgiApp:
    """Wrap a WSGI app: requests without the right credentials get 401."""

    def guarded(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if auth.check(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'), ("Content-Type", "text/plain")],
        )
        return [b"401 Unauthorized\n"]

    return guarded


def with_head(app: WsgiApp) -> WsgiApp:
    """HEAD answers as GET would, headers (Content-Length included) without the body."""

    def head(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        reply: list = []
        body = b"".join(
            app({**environ, "REQUEST_METHOD": "GET"}, lambda status, headers, *_: reply.extend((status, headers)))
        )
        headers = [(k, v) for k, v in reply[1] if k.lower() != "content-length"]
        start_response(reply[0], [*headers, ("Content-Length", str(len(body)))])
        return []

    return head


class _QuietHandler(WSGIRequestHandler):
    """No access log; the TLS handshake happens here, in the request's own thread,
    so a client that stalls mid-handshake cannot block the accept loop.

    ``read_timeout_s`` bounds each read and also the whole request head: a client that sends a
    byte now and then, each within the per-read timeout, is cut off once the handshake, request
    line and headers have taken ``read_timeout_s`` in all (a GET has no body to wait for)."""

    _deadline: threading.Timer | None = None

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # StreamRequestHandler sets it on the socket
        self._deadline = threading.Timer(self.timeout, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def _cut_off(self) -> None:
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the handler ends

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self._deadline is not None:  # the head is in: the deadline no longer applies
            self._deadline.cancel()
        return ok

    def finish(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _Server(ThreadingWSGIServer):
    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    max_connections = DEFAULT_MAX_CONNECTIONS
    _active = 0
    _last_warning = float("-inf")

    def server_activate(self) -> None:
        self._count_lock = threading.Lock()
        super().server_activate()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning(message, *args)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _NO_FDS:  # the pending connection stays queued: wait rather than spin
                self._warn("cannot accept a metrics connection: %s (logged once a minute)", exc.strerror)
                time.sleep(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if full:
            self._warn("over %d metrics connections: closing new ones (logged once a minute)", self.max_connections)
            with contextlib.suppress(OSError):
                request.close()
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self._active -= 1


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``registry`` on ``/metrics`` from a daemon thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        basic_auth: BasicAuth | None = None,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file")
        if not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {read_timeout_s}")
        if max_connections < 1 or backlog < 1:
            raise ValueError(f"max_connections and backlog must be >= 1, got {max_connections} and {backlog}")
        app: WsgiApp = make_wsgi_app(registry)
        if basic_auth is not None:
            app = with_basic_auth(app, basic_auth)
        app = with_head(app)
        self.tls = tls_cert is not None
        ctx = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        base = _IPv6Server if ":" in host else _Server
        server_class = type(
            base.__name__,
            (base,),
            {"read_timeout_s": read_timeout_s, "max_connections": max_connections, "request_queue_size": backlog},
        )
        self._httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        if ctx is not None:
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        # the accept loop blocks in select() without a timeout: no wake-ups while nobody scrapes
        # (socketserver's default polls twice a second); stop() wakes it with a connection
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": None}, name="bmap-agent-http", daemon=True
        )

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (safe before ``start()``)."""
        if self._thread.is_alive():
            # shutdown() sets the loop's stop flag and waits for it; the loop only looks at the
            # flag when select() returns, so connect until it has (a connection that comes
            # before the flag is served as an empty request)
            waiter = threading.Thread(target=self._httpd.shutdown, daemon=True)
            waiter.start()
            deadline = time.monotonic() + 5.0
            while waiter.is_alive() and time.monotonic() < deadline:
                self._wake()
                waiter.join(0.05)
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd.server_close()

    def _wake(self) -> None:
        """Open and close one connection to the listening socket (a wildcard address through
        loopback; for ``::`` IPv6 loopback first, then IPv4 for a host without it)."""
        hosts = {"0.0.0.0": ("127.0.0.1",), "": ("127.0.0.1",), "::": ("::1", "127.0.0.1")}.get(self.host, (self.host,))
        for host in hosts:
            try:
                with socket.create_connection((host, self.port), timeout=1.0):
                    return
            except OSError:
                continue
