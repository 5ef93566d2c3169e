"""Sealed content: text the server hands a client encrypted, to be given back unchanged.

Clients that keep no server state (``store: false``, Codex replaying its whole history every
turn) still need the model's reasoning and compaction summaries on later turns. The server
returns them as ``encrypted_content``: AES-256-GCM under the server's key, so the client can
neither read nor alter them, and a token sealed for one purpose cannot be passed off as
another (the purpose is authenticated data). A token reads::

    exl1.<base64url(12-byte nonce || ciphertext || 16-byte tag)>

The key comes from ``--encryption-key`` (any secret, stretched with HKDF-SHA256) or from a
random key the server keeps in its data directory (see :mod:`exloop.server.keys`); servers that
share the key read each other's tokens.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Literal, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: What a token holds; bound to the token, so one kind never opens as another.
SealedKind: TypeAlias = Literal["reasoning", "compaction"]

KEY_BYTES = 32
_PREFIX = "exl1."
_NONCE_BYTES = 12
_TAG_BYTES = 16
#: The longest token accepted (characters): about 3 MiB of text, far more than a model's
#: reasoning or summary of one context window.
MAX_SEALED_CHARS = 4 * 1024 * 1024


class Unsealable(ValueError):
    """A token that is malformed, too long, altered, sealed with another key or for another
    purpose."""


class Sealer:
    """Seals and opens text with one key (thread-safe; no state besides the key)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"A sealing key has {KEY_BYTES} bytes, not {len(key)}.")
        self._aead = AESGCM(key)

    @classmethod
    def from_secret(cls, secret: str) -> Sealer:
        """A sealer whose key is derived from an operator's secret (``--encryption-key``)."""
        kdf = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"exloop sealing v1"
        )
        return cls(kdf.derive(secret.encode("utf-8")))

    def seal(self, kind: SealedKind, text: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, text.encode("utf-8"), _aad(kind))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def open(self, kind: SealedKind, token: str) -> str:
        """The text sealed in ``token``; :class:`Unsealable` when it cannot be trusted."""
        if len(token) > MAX_SEALED_CHARS:
            raise Unsealable(f"it is longer than {MAX_SEALED_CHARS} characters")
        if not token.startswith(_PREFIX):
            raise Unsealable("it was not produced by this server")
        body = token[len(_PREFIX) :]
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise Unsealable("it is not valid base64") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise Unsealable("it is truncated")
        try:
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(kind))
        except InvalidTag:
            raise Unsealable(
                "it was altered, or sealed with another key or for another item type"
            ) from None
        return plain.decode("utf-8")


def _aad(kind: SealedKind) -> bytes:
    return f"exloop:{kind}:v1".encode("ascii")
