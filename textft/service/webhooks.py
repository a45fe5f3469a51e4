"""Webhooks: every state change of a job that names a ``webhook_url`` is POSTed there as JSON.

The body is signed with HMAC-SHA256 under the job owner's webhook secret (``X-Textft-Signature-256:
sha256=HEX``, over the exact bytes of the body), so a receiver knows the service sent it. Deliveries
are rows of the store, written in the transaction that records the state change; a dispatcher
thread of the service sends them (a few at a time, never on the monitor's or a request's thread),
retries failures with exponential backoff and records each attempt on the delivery, where
``GET /v1/jobs/{id}/deliveries`` and the job's page show it. A job's changes reach its receiver in
order: the next waits until the previous one was delivered or given up.

A webhook URL is user input aimed at the service's network. Only http and https are accepted, and
an address that is not public (loopback, private, link-local, the cloud metadata address, ...) is
refused unless the operator allows it (``--allow-private-webhooks``). The check is made when the job
is created and again at every delivery on the address the connection then actually uses (a name
that resolves elsewhere later, DNS rebinding, gains nothing), and redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import random
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from textft.service.store import Store
from textft.service.textft_api import __version__

log = logging.getLogger("textft.service")

SIGNATURE_HEADER = "X-Textft-Signature-256"
SECRET_PREFIX = "whsec_"
MAX_URL = 2048
POLL_S = 0.5
MAX_DELAY_S = 600.0


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` (what a receiver checks; constant time)."""
    return bool(header) and hmac.compare_digest(sign(secret, body), header.strip())


class Refused(Exception):
    """A URL or address the service does not send to (not retried)."""


PRIVATE_HINT = ("the service sends webhooks to public addresses only (its operator can allow others with"
                " --allow-private-webhooks)")


def address_problem(ip: str, allow_private: bool) -> str | None:
    """Why the service must not connect to ``ip`` (\"is a loopback address; ...\"), or None."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_multicast or addr.is_unspecified:
        return "is not a host address"
    if allow_private or addr.is_global:
        return None
    kind = ("a loopback" if addr.is_loopback else "a link-local" if addr.is_link_local
            else "a private" if addr.is_private else "a reserved")
    return f"is {kind} address; {PRIVATE_HINT}"


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of a webhook URL, or Refused saying what is wrong with it."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL or any(c.isspace() for c in url):
        raise Refused(f"expected an http:// or https:// URL of at most {MAX_URL} characters, without spaces")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"expected an http:// or https:// URL, got scheme '{parts.scheme or 'none'}'")
    if parts.username is not None or parts.password is not None:
        raise Refused("a user name or password in the URL is not accepted (the body is signed instead)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise Refused("the URL names no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def resolve(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to: every address the name has must be allowed (else Refused)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"host '{host}' does not resolve ({e})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for ip in addresses:
        if problem := address_problem(ip, allow_private):
            raise Refused(f"{ip} {problem}" if ip == host else f"host '{host}' resolves to {ip}, which {problem}")
    return addresses[0]


def url_problem(url: str, allow_private: bool) -> str | None:
    """What is wrong with a job's webhook URL, as its 422 says it (None: acceptable)."""
    try:
        _, host, port, _ = split_url(url)
        resolve(host, port, allow_private)
    except Refused as e:
        return f"'webhook_url': {e}"
    return None


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the name resolves to by now."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.ip = ip

    def connect(self):
        self.sock = socket.create_connection((self.ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.ip = ip

    def connect(self):
        sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # the certificate is the name's


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, allow_private: bool) -> int:
    """POST ``body``; the response status. Refused for a URL or address the service does not send to."""
    scheme, host, port, path = split_url(url)
    ip = resolve(host, port, allow_private)
    conn = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(host, port, ip, timeout)
    # ``timeout`` bounds each socket operation; a receiver that trickles its answer a byte at a time
    # would hold a sender for ever, so the whole attempt is cut off after twice that.
    deadline = threading.Timer(2 * timeout, _cut_off, (conn,))
    deadline.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(4096)  # what a receiver answers is not kept; a little is read so it can finish
        return response.status
    finally:
        deadline.cancel()
        conn.close()


def _cut_off(conn: http.client.HTTPConnection) -> None:
    """Wake a send or receive blocked on ``conn`` (a shutdown does; a close from another thread does not)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


@dataclass
class WebhookSettings:
    allow_private: bool = False
    """Send to loopback and private addresses too (a receiver on the service's own network)."""
    timeout_s: float = 10.0
    """Seconds one attempt may take to connect, and to answer."""
    max_attempts: int = 8
    """Attempts of one delivery before it is given up (failed)."""
    retry_s: float = 1.0
    """Wait before the first retry; it doubles after each failure (up to 10 minutes), with jitter."""
    parallel: int = 4
    """Deliveries in flight at once (to different jobs)."""


def backoff(settings: WebhookSettings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (±10% jitter spreads retries)."""
    return min(MAX_DELAY_S, settings.retry_s * 2 ** (attempts - 1)) * random.uniform(0.9, 1.1)


class Dispatcher:
    """The service's webhook sender: a thread that hands due deliveries to a small pool."""

    def __init__(self, store: Store, settings: WebhookSettings):
        self.store, self.settings = store, settings
        self._pool = ThreadPoolExecutor(max(1, settings.parallel), thread_name_prefix="textft-webhook")
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="textft-webhooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Pending deliveries stay in the store; the next start sends them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch()
            except Exception:  # a broken row or a busy database must not end the deliveries
                log.exception("webhook dispatch failed")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def dispatch(self) -> None:
        with self._lock:
            free = self.settings.parallel - len(self._in_flight)
        if free <= 0:
            return
        for row in self.store.due_deliveries(time.time(), free + len(self._in_flight)):
            with self._lock:
                if row["id"] in self._in_flight or len(self._in_flight) >= self.settings.parallel:
                    continue
                self._in_flight.add(row["id"])
            self._pool.submit(self._deliver, row)

    def _deliver(self, row: dict) -> None:
        try:
            self.attempt(row)
        except Exception:
            log.exception("webhook delivery %s failed", row["id"])
        finally:
            with self._lock:
                self._in_flight.discard(row["id"])
            self._wake.set()

    def attempt(self, row: dict) -> None:
        """One attempt of one delivery, recorded on it."""
        body = row["body"].encode()
        number = row["attempts"] + 1
        started = time.time()
        status, error, final = None, None, False
        if not row.get("secret"):
            error, final = "the job's key has no webhook secret (textft service keys webhook-secret NAME)", True
        else:
            headers = {"Content-Type": "application/json", "User-Agent": f"textft/{__version__}",
                       "X-Textft-Event": "job.state", "X-Textft-Delivery": f"{row['job_id']}.{row['event_id']}",
                       "X-Textft-Attempt": str(number), SIGNATURE_HEADER: sign(row["secret"], body)}
            try:
                status = post(row["url"], body, headers, self.settings.timeout_s, self.settings.allow_private)
            except Refused as e:
                error, final = f"refused: {e}", True
            except (OSError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if status is not None and 300 <= status < 400:
            error, final = f"answered {status}: redirects are not followed", True
        elif status is not None and not 200 <= status < 300:
            error = f"answered {status}"
        ok = error is None
        attempt = {"attempt": number, "at": round(started, 3), "seconds": round(time.time() - started, 3),
                   "status": status, "error": error}
        if ok:
            state, next_at = "delivered", None
        elif final or number >= self.settings.max_attempts:
            state, next_at = "failed", None
        else:
            state, next_at = "pending", time.time() + backoff(self.settings, number)
        self.store.record_attempt(row["id"], attempt, state, next_at)
        if not ok:
            log.info("webhook %s.%s to %s: %s (%s)", row["job_id"], row["event_id"], row["url"], error,
                     "retried" if state == "pending" else "given up")
