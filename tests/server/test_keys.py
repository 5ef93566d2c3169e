"""The sealing key: derived from --encryption-key, or generated once and kept 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from exloop.orchestrator.sealing import MAX_SEALED_CHARS, Sealer, Unsealable
from exloop.server.keys import KEY_FILE, SealingKeyError, load_sealer


def test_the_key_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "state"
    first = load_sealer(None, data)
    path = data / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    token = first.seal("reasoning", "kept across restarts")
    assert load_sealer(None, data).open("reasoning", token) == "kept across restarts"


def test_a_corrupt_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(SealingKeyError, match="delete it"):
        load_sealer(None, tmp_path)


def test_a_secret_gives_the_same_key_everywhere(tmp_path: Path) -> None:
    secret = "shared by every server behind the balancer"
    token = load_sealer(secret, tmp_path / "a").seal("compaction", "summary")
    assert load_sealer(secret, tmp_path / "b").open("compaction", token) == "summary"
    assert not (tmp_path / "a").exists()  # nothing is written with a secret
    with pytest.raises(SealingKeyError, match="at least 32"):
        load_sealer("short", tmp_path)


def test_tokens_are_bound_to_their_key_and_kind() -> None:
    sealer = Sealer.from_secret("x" * 32)
    token = sealer.seal("reasoning", "thought")
    assert token.startswith("exl1.") and "thought" not in token
    assert sealer.seal("reasoning", "thought") != token  # a fresh nonce each time
    for bad, reason in [
        (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "altered"),
        ("exl1.AAAA", "truncated"),
        ("exl1.!!!!", "base64"),
        ("plain text", "not produced by this server"),
        ("exl1." + "A" * MAX_SEALED_CHARS, "longer"),
    ]:
        with pytest.raises(Unsealable, match=reason):
            sealer.open("reasoning", bad)
    with pytest.raises(Unsealable, match="another item type"):
        sealer.open("compaction", token)
    with pytest.raises(Unsealable, match="another key"):
        Sealer.from_secret("y" * 32).open("reasoning", token)
