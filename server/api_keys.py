"""API keys: who may call the server, and which key a request came with.

Keys come from ``--api-key`` (repeatable) and ``--api-key-file`` (one per line; blank lines and
lines starting with ``#`` are skipped). A request's bearer token is compared with every key
in constant time (SHA-256 digests, so neither a key's length nor which key matched shows in
the timing). A key is known to the rest of the server only by its id, a hash: the owner a
stored response records; the key itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path


def key_id(key: str) -> str:
    """The id under which ``key`` owns responses (stable across restarts)."""
    return "key_" + hashlib.sha256(b"exloop-api-key:" + key.encode()).hexdigest()[:32]


class KeyFileError(ValueError):
    """An API key file that cannot be read or holds no key."""


def read_key_file(path: Path) -> list[str]:
    """The keys in ``path``, one per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise KeyFileError(f"the API key file {path} holds no key")
    return keys


class ApiKeys:
    """The accepted keys; empty means the server is open to every client."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        unique = dict.fromkeys(key for key in keys if key)
        self._digests = tuple((_digest(key.encode()), key_id(key)) for key in unique)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"

    def identify(self, token: bytes) -> str | None:
        """The id of the key ``token`` is, or None; every key is compared, whatever matches."""
        digest = _digest(token)
        found = None
        for candidate, identity in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = identity
        return found


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()
