"""What one HTTP client may hold: the service's connections under careless and hostile clients.

uvicorn bounds neither how long a client takes to send a request's headers or body nor how many
connections one address keeps open, and answers a request it cannot parse in plain text. The
protocol here is uvicorn's h11 protocol with those limits added, so they hold before the app (and
its error handlers) sees anything:

- a request's headers must arrive within ``header_timeout`` s of the connection (or of their first
  byte on a kept-alive one), else 408; a body may pause at most ``body_timeout`` s (while the app
  reads it: a slow app is not the client's fault), else the connection is closed;
- one address holds at most ``max_per_client`` connections; the next is answered 429 and closed;
- every refusal is the service's JSON error shape, ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("textft.service")

REASONS = {400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests"}


def refusal(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with the service's JSON error body."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body



class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol under the limits below (``guarded_protocol`` sets them)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_per_client: int = 0
    open_per_address: dict[str, int] = {}
    _counted: str | None = None
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.max_per_client:
            if self.open_per_address.get(address, 0) >= self.max_per_client:
                log.warning("refused a connection from %s: it holds %d already", address, self.max_per_client)
                self._refuse(429, f"too many open connections from this address (at most {self.max_per_client});"
                                  " close some or wait for them to finish")
                return
            self.open_per_address[address] = self.open_per_address.get(address, 0) + 1
            self._counted = address
        self._arm(self.header_timeout, self._headers_late)

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._counted is not None:
            left = self.open_per_address.get(self._counted, 1) - 1
            if left > 0:
                self.open_per_address[self._counted] = left
            else:
                self.open_per_address.pop(self._counted, None)
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._timer is None and data:  # a new request on a kept-alive connection: its headers' clock
                self._arm(self.header_timeout, self._headers_late)
        elif state is h11.SEND_BODY:
            self._arm(self.body_timeout, self._body_late)  # each chunk restarts the clock: a pause is bounded
        else:
            self._disarm()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "the request is not valid HTTP/1.1")

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float, then) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(408, f"the request's headers did not arrive within {self.header_timeout:g} s")

    def _body_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow is not None and self.flow.read_paused:  # the app has not read what came yet
            self._arm(self.body_timeout, self._body_late)
            return
        message = f"the request's body paused for more than {self.body_timeout:g} s"
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(refusal(408, message))
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self.transport.write(refusal(status, message))
        self.transport.close()


def guarded_protocol(header_timeout: float, body_timeout: float, max_per_client: int) -> type[GuardedProtocol]:
    """The protocol under these limits, with its own count of connections per address (pass it as
    ``uvicorn.Config(http=...)``)."""
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout": header_timeout, "body_timeout": body_timeout, "max_per_client": max_per_client,
        "open_per_address": {}})
