"""The server's sealing key: from ``--encryption-key``, or kept in the data directory.

Without ``--encryption-key`` the server generates a random 256-bit key on first start and
keeps it in ``<data dir>/sealing.key`` (the directory 0700, the file 0600, written
exclusively so two servers starting at once agree on one key); later starts read it, so
reasoning and compaction items sealed before a restart still open. Servers behind one load
balancer share a key through ``--encryption-key`` (any secret of at least
:data:`MIN_SECRET_CHARS` characters) or by sharing the file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from exloop.orchestrator.sealing import KEY_BYTES, Sealer

log = logging.getLogger("exloop.server")

KEY_FILE = "sealing.key"
MIN_SECRET_CHARS = 32


class SealingKeyError(ValueError):
    """The key cannot be had: a short secret, or an unreadable or corrupt key file."""


def load_sealer(secret: str | None, data_dir: Path) -> Sealer:
    """The sealer for ``--encryption-key`` ``secret``, or for the key kept in ``data_dir``
    (created on first use). Blocks on file I/O: call it at start-up."""
    if secret is not None:
        if len(secret) < MIN_SECRET_CHARS:
            raise SealingKeyError(
                f"--encryption-key must have at least {MIN_SECRET_CHARS} characters "
                f"(it has {len(secret)}); use a random secret, e.g. `openssl rand -hex 32`."
            )
        return Sealer.from_secret(secret)
    return Sealer(_key_file(data_dir / KEY_FILE))


def _key_file(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise SealingKeyError(f"Cannot create the sealing key {path}: {exc.strerror}.") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(key + b"\n")
    log.info("generated a sealing key in %s", path)
    return base64.b64decode(key)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_bytes().strip()
    except OSError as exc:
        raise SealingKeyError(f"Cannot read the sealing key {path}: {exc.strerror}.") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users; chmod 600 it", path)
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_BYTES:
        raise SealingKeyError(
            f"{path} does not hold a sealing key ({KEY_BYTES} bytes in base64); delete it to "
            "have a new one generated (items sealed with the old key will no longer open)."
        )
    return key
