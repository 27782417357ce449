"""What ``serve`` bounds per connection and per request, and the HTTP protocol that enforces the
connection-level part (docs/limits.md lists each limit with its default and flag).

The request-level limits (body size, prompt length) are checked by the API handlers; the
connection-level ones are enforced by :class:`GuardedH11Protocol`, uvicorn's h11 protocol with:

- a connection cap: a connection beyond ``max_connections`` is answered 503 and closed at once;
- a header size limit: a request line and headers over ``max_header_bytes`` get 431 (h11's own
  limit only bounds a header still incomplete in its buffer, not one that arrives whole);
- a header read timeout: the request line and headers must arrive within ``header_timeout_s``
  of the connection opening (or of the first byte of a request on a kept-alive connection);
- a body read timeout: the body must arrive within ``body_timeout_s`` after the headers.

A connection that overruns a timeout is closed (with a 408 when no response has begun), so
half-open and slow clients cannot hold file descriptors. A response that closes the connection
before the request's body was read (a 413) is followed by a lingering close, as web servers do:
the write side is shut, and what the client still sends is read and dropped for up to
``LINGER_S``, so the client reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("bottleneck_map.serve")

MIB = 1 << 20
# File descriptors kept for everything but client connections (the engine pipe, model files,
# the bundle's segments, tokenizer threads, logs).
FD_RESERVE = 128
LINGER_S = 2.0
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class ServeLimits:
    """``serve``'s limits; each has a flag of the same name (``--max-body-bytes``, ...)."""

    max_body_bytes: int = 16 * MIB
    max_prompt_chars: int | None = None  # None: max_model_len x the longest vocabulary entry
    max_header_bytes: int = 16 * 1024  # h11's own default
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0  # uvicorn's default
    max_connections: int = 1024
    backlog: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_connections", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be >= 1, got {self.max_prompt_chars}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def prompt_char_limit(limits: ServeLimits, max_model_len: int, max_token_chars: int) -> int:
    """The longest prompt, in characters, that can fit ``max_model_len`` tokens: one token covers at
    most ``max_token_chars`` characters, so a longer text cannot fit and is refused untokenized."""
    if limits.max_prompt_chars is not None:
        return limits.max_prompt_chars
    return max_model_len * max(1, max_token_chars)


def fit_connections_to_fd_limit(max_connections: int) -> int:
    """Raise this process's soft open-file limit towards its hard limit, then lower
    ``max_connections`` to what that leaves after :data:`FD_RESERVE`, so the cap is reached
    before ``accept`` fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    fitted = max(1, min(max_connections, soft - FD_RESERVE))
    if fitted < max_connections:
        log.warning(
            "the open-file limit (%d) allows %d connections, not the %d asked for", soft, fitted, max_connections
        )
    return fitted


class AcceptErrorFilter(logging.Filter):
    """Lets one "socket.accept() out of system resource" record of asyncio's through per
    ``every_s``, without its traceback. Out of file descriptors, asyncio's accept loop (CPython
    3.11) logs the error once per pending connection on every retry: megabytes a second."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last = float("-inf")
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.suppressed += 1
            return False
        self._last = now
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = f"{self.MESSAGE}: {exc or 'no file descriptors'} (logged once a minute; lower --max-connections)"
        record.args, record.exc_info, record.exc_text = (), None, None
        return True


def quiet_accept_errors() -> AcceptErrorFilter:
    """Install :class:`AcceptErrorFilter` on asyncio's logger (once)."""
    logger = logging.getLogger("asyncio")
    for f in logger.filters:
        if isinstance(f, AcceptErrorFilter):
            return f
    f = AcceptErrorFilter()
    logger.addFilter(f)
    return f


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": status}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and header and body read timeouts
    (``limits``; :meth:`with_limits` makes a subclass with others)."""

    limits: ServeLimits = ServeLimits()
    _read_timer: asyncio.TimerHandle | None = None
    _reading: str | None = None  # "headers" | "body" | "linger" while a timeout runs
    _header_bytes = 0  # of the request whose headers are being read
    _header_tail = b""  # its last bytes, to find the end of its headers across reads

    @classmethod
    def with_limits(cls, limits: ServeLimits) -> type[GuardedH11Protocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(
                _raw_response(503, "Service Unavailable", f"over {self.limits.max_connections} open connections")
            )
            transport.close()
            return
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading == "linger":
            return  # the rest of a refused body: dropped
        if self._reading is None and self.conn.their_state is h11.IDLE:
            self._arm("headers")  # the first bytes of a request on a kept-alive connection
        if self.conn.their_state is h11.IDLE and self._headers_too_large(data):
            self._disarm()
            limit = self.limits.max_header_bytes
            self.transport.write(
                _raw_response(431, "Request Header Fields Too Large", f"the request headers exceed {limit} bytes")
            )
            self.transport.close()
            return
        super().data_received(data)
        self._track()

    def _headers_too_large(self, data: bytes) -> bool:
        """Count the bytes of the headers being read, up to their end (a blank line) if it is in ``data``."""
        tail = self._header_tail
        end = _END_OF_HEADERS.search(tail + data)
        if end is None:
            self._header_bytes += len(data)
            self._header_tail = (tail + data)[-3:]
        else:
            self._header_bytes += end.end() - len(tail)
            self._header_tail = b""
        too_large = self._header_bytes > self.limits.max_header_bytes
        if end is not None:
            self._header_bytes = 0
        return too_large

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:
            self.cycle.transport = _LingeringClose(self)  # type: ignore[assignment]
        self._track()

    def timeout_keep_alive_handler(self) -> None:
        if self._reading != "linger":  # a lingering close ends on its own timer
            super().timeout_keep_alive_handler()

    def close_after_response(self) -> None:
        """Close the connection once the response is written; linger if the body is still coming."""
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            self.transport.close()
            return
        self._arm("linger")
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _track(self) -> None:
        state = self.conn.their_state
        if self._reading == "headers" and state is h11.SEND_BODY:
            self._arm("body")
        elif self._reading is not None and state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the request is read (or the connection is closing)

    def _arm(self, what: str) -> None:
        self._disarm()
        timeout = {"headers": self.limits.header_timeout_s, "body": self.limits.body_timeout_s}.get(what, LINGER_S)
        self._reading = what
        self._read_timer = self.loop.call_later(timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer, self._reading = None, None

    def _timed_out(self) -> None:
        what, timeout = self._reading, self._read_timer
        self._read_timer, self._reading = None, None
        if timeout is None or self.transport.is_closing():
            return
        if what == "linger":
            self.transport.close()
            return
        limit = self.limits.header_timeout_s if what == "headers" else self.limits.body_timeout_s
        if what == "headers" or not self.cycle.response_started:
            self.transport.write(
                _raw_response(408, "Request Timeout", f"the request {what} did not arrive within {limit:g} s")
            )
        self.transport.close()


class _LingeringClose:
    """The transport as a request's response cycle sees it: closing it closes the connection
    through :meth:`GuardedH11Protocol.close_after_response`."""

    def __init__(self, protocol: GuardedH11Protocol) -> None:
        self._protocol = protocol

    def __getattr__(self, name: str):
        return getattr(self._protocol.transport, name)

    def close(self) -> None:
        self._protocol.close_after_response()
