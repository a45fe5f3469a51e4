"""API keys: ``tft_<id>_<secret>``, shown once, stored as a salted scrypt hash.

The id names the key (lists, logs, revocation) and finds its row; only the secret is hashed.
Verifying scrypt costs tens of milliseconds on purpose, so a key verified once is remembered in
memory as an HMAC under a per-process random pepper, and later requests compare that in
constant time. The row is still read on every request, so a revocation (from the key command,
another process) takes effect at once.

A key id nobody has costs the same scrypt as a wrong secret (against a decoy hash), so timing does
not tell which ids exist; each client address gets a bounded number of failed checks a minute, so
wrong secrets are no lever on the service's CPU either.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from textft.service.store import Store
from textft.service.textft_api import UserError, closest
from textft.service.webhooks import new_secret

PREFIX = "tft_"
ID_HEX = 12
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
HUB_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
"""A Hub user or organization: the part of a repository id before its slash."""
KEY = re.compile(rf"^{PREFIX}([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{20,128}})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and name, whether it is an admin key, and its limits."""

    id: str
    name: str
    admin: bool
    max_queued: int | None
    max_upload_bytes: int | None
    max_steps: int | None = None
    max_job_seconds: float | None = None
    max_storage_bytes: int | None = None
    hub_namespaces: tuple[str, ...] = ()
    """Hub users or organizations this key may push into with the service's own token."""


LIMITS = ("max_queued", "max_upload_bytes", "max_steps", "max_job_seconds", "max_storage_bytes")
"""A key's own limits (None: the service's)."""
LIMIT_FLAGS = {"max_queued": ("--max-queued", 1), "max_upload_bytes": ("--max-upload-mb", 1e6),
               "max_steps": ("--max-steps", 1), "max_job_seconds": ("--max-job-hours", 3600),
               "max_storage_bytes": ("--max-storage-mb", 1e6)}
"""The ``keys create`` flag of each limit and the unit it is given in."""


class AuthError(Exception):
    """Answered with 401."""


class Throttled(AuthError):
    """Answered with 429: too many failed key checks from one client address."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class FailedChecks:
    """Failed key checks per client address over a sliding window; an address over the limit is
    refused every check, right or wrong, until its oldest failure leaves the window."""

    def __init__(self, limit: int, window_s: float = 60.0, addresses: int = 10_000):
        self.limit, self.window_s, self.addresses = limit, window_s, addresses
        self._seen: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str | None) -> None:
        if not self.limit or address is None:
            return
        now = time.monotonic()
        with self._lock:
            failures = self._seen.get(address)
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if failures and len(failures) >= self.limit:
                wait = max(1, int(failures[0] + self.window_s - now + 0.999))
                raise Throttled(f"too many failed key checks from this address ({self.limit} a minute);"
                                f" try again in {wait} s", wait)

    def failed(self, address: str | None) -> None:
        if not self.limit or address is None:
            return
        with self._lock:
            failures = self._seen.pop(address, None) or deque(maxlen=self.limit)
            failures.append(time.monotonic())
            self._seen[address] = failures  # most recent last: the stalest address goes first
            while len(self._seen) > self.addresses:
                self._seen.popitem(last=False)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def create_key(store: Store, name: str, admin: bool = False, hub_namespaces: list[str] | None = None,
               **limits) -> tuple[str, dict]:
    """A new key (the only time its secret exists outside the caller) and its stored record;
    ``limits``: its own values of LIMITS (the others stay the service's)."""
    problems = []
    if not NAME.match(name or ""):
        problems.append(f"'--name' must be 1-64 letters, digits or _.@- (starting with a letter or digit), got {name!r}")
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise TypeError(f"create_key() got unknown limit(s) {', '.join(unknown)}")
    for limit, value in limits.items():
        flag, unit = LIMIT_FLAGS[limit]
        if value is not None and (value < 0 if limit == "max_queued" else value <= 0):
            problems.append(f"'{flag}' must be {'>= 0' if limit == 'max_queued' else '> 0'}, got {value / unit:g}")
    for namespace in hub_namespaces or ():
        if not HUB_NAMESPACE.match(namespace):
            problems.append(f"'--hub-namespace' must be a Hub user or organization name (letters, digits, _.-),"
                            f" got {namespace!r}")
    if problems:
        raise UserError(problems)
    key_id, secret = secrets.token_hex(ID_HEX // 2), secrets.token_urlsafe(32)
    salt = os.urandom(16)
    if not store.insert_key(key_id, name, salt, _hash(secret, salt), admin,
                            {limit: limits.get(limit) for limit in LIMITS}, list(dict.fromkeys(hub_namespaces or ()))):
        raise UserError(f"'--name': a key named '{name}' already exists; revoke it or choose another name", "--name",
                        "conflict")
    webhook_secret = new_secret()
    store.set_webhook_secret(key_id, webhook_secret)
    return f"{PREFIX}{key_id}_{secret}", {**describe(store.key(key_id)), "webhook_secret": webhook_secret}


def describe(row: dict) -> dict:
    """A key's record without its salt and hash."""
    return {"id": row["id"], "name": row["name"], "admin": bool(row["admin"]),
            **{limit: row[limit] for limit in LIMITS}, "hub_namespaces": row.get("hub_namespaces") or [],
            "created_at": row["created_at"], "revoked_at": row["revoked_at"],
            "has_webhook_secret": bool(row.get("webhook_secret"))}


def list_keys(store: Store) -> list[dict]:
    return [describe(r) for r in store.keys()]


def revoke_key(store: Store, id_or_name: str) -> dict:
    row = store.revoke_key(id_or_name)
    if row is None:
        names = list(store.key_names().values())
        raise UserError(f"no key with id or name '{id_or_name}'{closest(id_or_name, names)}", kind="not_found")
    return describe(row)


def rotate_webhook_secret(store: Store, id_or_name: str) -> tuple[dict, str]:
    """A new webhook secret for a key (the old one no longer signs): its record and the secret."""
    row = store.key_by_id_or_name(id_or_name)
    if row is None:
        names = list(store.key_names().values())
        raise UserError(f"no key with id or name '{id_or_name}'{closest(id_or_name, names)}", kind="not_found")
    if row["revoked_at"] is not None:
        raise UserError(f"key '{row['name']}' is revoked; create a new key instead", kind="conflict")
    secret = new_secret()
    store.set_webhook_secret(row["id"], secret)
    return describe(row), secret


class Verifier:
    """Checks ``Authorization: Bearer`` values against the store."""

    def __init__(self, store: Store, cache_size: int = 1024, max_failures: int = 0):
        self.store, self.cache_size = store, cache_size
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._decoy_salt = os.urandom(16)
        self._decoy = _hash(secrets.token_urlsafe(32), self._decoy_salt)
        self.failures = FailedChecks(max_failures)

    def principal(self, authorization: str | None, address: str | None = None) -> Principal:
        """The key's holder; AuthError (Throttled once ``address`` failed too often) otherwise."""
        self.failures.check(address)
        try:
            return self._principal(authorization)
        except AuthError:
            if authorization:  # a page asking before it has a key is no guess
                self.failures.failed(address)
            raise

    def _principal(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing API key: send the header 'Authorization: Bearer KEY'"
                            " (create one with: textft service keys create --name NAME)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer KEY'")
        match = KEY.match(token.strip())
        row = self.store.key(match.group(1)) if match else None
        if row is None:
            if match:  # the work of a wrong secret, so that an unknown id answers no sooner
                hmac.compare_digest(_hash(match.group(2), self._decoy_salt), self._decoy)
            raise AuthError("invalid API key")
        secret = match.group(2)
        fast = hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._verified.get(row["id"])
        if known is None or not hmac.compare_digest(known, fast):
            if not hmac.compare_digest(_hash(secret, row["salt"]), row["hash"]):
                raise AuthError("invalid API key")
            with self._lock:
                if len(self._verified) >= self.cache_size:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[row["id"]] = fast
        if row["revoked_at"] is not None:
            raise AuthError(f"API key '{row['name']}' was revoked")
        return Principal(row["id"], row["name"], bool(row["admin"]), **{limit: row[limit] for limit in LIMITS},
                         hub_namespaces=tuple(row.get("hub_namespaces") or ()))
