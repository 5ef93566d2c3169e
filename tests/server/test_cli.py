"""The ``exloop`` command line: flags, their environment variables, start-up failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from exloop.server.cli import ServeSettings, build_parser, main

FLAGS = [
    "--model",
    "--backend",
    "--max-seq-len",
    "--cache-mode",
    "--max-batch-size",
    "--host",
    "--port",
    "--max-tool-rounds",
    "--served-model-name",
    "--tool-call-format",
    "--api-key",
    "--search-provider",
    "--searxng-url",
    "--fetch-allow-private",
    "--n-ctx",
    "--threads",
    "--threads-batch",
    "--log-level",
    "--store",
    "--store-ttl",
    "--store-max-responses",
    "--store-max-bytes",
    "--shutdown-grace",
    "--replica-timeout",
    "--chat-template",
    "--data-dir",
    "--encryption-key",
]


def settings(*argv: str) -> ServeSettings:
    return ServeSettings.from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for flag in FLAGS:
        monkeypatch.delenv("EXLOOP_" + flag[2:].upper().replace("-", "_"), raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    data_dir = tmp_path / "exloop"
    assert settings() == ServeSettings(
        model=None,
        backend="auto",
        host="127.0.0.1",
        port=1234,
        max_tool_rounds=8,
        served_model_name=None,
        tool_call_format=None,
        api_key=None,
        search_provider="ddgs",
        searxng_url=None,
        fetch_allow_private=False,
        n_ctx=None,
        threads=None,
        threads_batch=None,
        max_seq_len=None,
        cache_mode="fp16",
        max_batch_size=8,
        log_level="info",
        store=f"sqlite:{data_dir / 'responses.db'}",
        store_ttl=30 * 86400,
        store_max_responses=100_000,
        store_max_bytes=1 << 30,
        shutdown_grace=10,
        replica_timeout=10,
        data_dir=data_dir,
    )


def test_the_default_store_follows_the_xdg_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EXLOOP_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert settings().store == f"sqlite:{tmp_path / 'exloop' / 'responses.db'}"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings().store == f"sqlite:{tmp_path / '.local' / 'share' / 'exloop' / 'responses.db'}"


def test_every_flag_has_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MODEL": "/m.gguf",
        "HOST": "0.0.0.0",
        "PORT": "8080",
        "MAX_TOOL_ROUNDS": "3",
        "SERVED_MODEL_NAME": "smol",
        "TOOL_CALL_FORMAT": "hermes",
        "API_KEY": "k",
        "SEARCH_PROVIDER": "searxng",
        "SEARXNG_URL": "http://searx",
        "FETCH_ALLOW_PRIVATE": "1",
        "N_CTX": "2048",
        "THREADS": "2",
        "THREADS_BATCH": "3",
        "LOG_LEVEL": "debug",
        "BACKEND": "llama.cpp",
        "MAX_SEQ_LEN": "4096",
        "CACHE_MODE": "q4",
        "MAX_BATCH_SIZE": "2",
        "STORE": "redis://r:6379/1",
        "STORE_TTL": "12h",
        "STORE_MAX_RESPONSES": "50",
        "STORE_MAX_BYTES": "512M",
        "SHUTDOWN_GRACE": "2.5",
        "REPLICA_TIMEOUT": "30s",
        "CHAT_TEMPLATE": "/t.jinja",
        "DATA_DIR": "/var/lib/exloop",
        "ENCRYPTION_KEY": "s" * 32,
    }
    assert {f"--{name.lower().replace('_', '-')}" for name in env} == set(FLAGS)
    for name, value in env.items():
        monkeypatch.setenv(f"EXLOOP_{name}", value)
    assert settings() == ServeSettings(
        model=Path("/m.gguf"),
        backend="llama.cpp",
        host="0.0.0.0",
        port=8080,
        max_tool_rounds=3,
        served_model_name="smol",
        tool_call_format="hermes",
        api_key="k",
        search_provider="searxng",
        searxng_url="http://searx",
        fetch_allow_private=True,
        n_ctx=2048,
        threads=2,
        threads_batch=3,
        max_seq_len=4096,
        cache_mode="q4",
        max_batch_size=2,
        log_level="debug",
        store="redis://r:6379/1",
        store_ttl=12 * 3600,
        store_max_responses=50,
        store_max_bytes=512 << 20,
        shutdown_grace=2.5,
        replica_timeout=30,
        chat_template=Path("/t.jinja"),
        data_dir=Path("/var/lib/exloop"),
        encryption_key="s" * 32,
    )
    # A flag on the command line wins over its variable.
    assert settings("--port", "9000", "--max-tool-rounds", "1").port == 9000


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
        assert "EXLOOP_" + flag[2:].upper().replace("-", "_") in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--max-tool-rounds", "0"],
        ["--search-provider", "bing"],
        ["--n-ctx", "x"],
        ["--threads", "0"],
        ["--backend", "tpu"],
        ["--cache-mode", "q2"],
        ["--store", "postgres://db"],
        ["--store-ttl", "forever"],
        ["--store-ttl", "0"],
        ["--store-max-bytes", "lots"],
        ["--store-max-responses", "0"],
        ["--shutdown-grace", "-1"],
        ["--replica-timeout", "0.1"],
    ],
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", *argv])
    assert info.value.code == 2


def test_a_missing_model_stops_start_up_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.gguf"
    assert main(["serve", "--model", str(missing), "--log-level", "error"]) == 1
    error = capsys.readouterr().err
    assert str(missing) in error and "fetch-model" in error


def test_a_backend_that_cannot_load_the_model_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(tmp_path), "--backend", "llama.cpp"]) == 1
    assert "directory" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_an_unknown_tool_call_format_is_a_usage_error(
    where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--log-level", "error"]
    if where == "flag":
        argv += ["--tool-call-format", "bogus"]
    else:
        monkeypatch.setenv("EXLOOP_TOOL_CALL_FORMAT", "bogus")
    # Refused while reading the flags: before any model is loaded, and without a traceback.
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "--tool-call-format" in error and "'bogus'" in error
    assert "hermes" in error and "llama3" in error  # the known names
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read --chat-template"), ("{% for m in messages %}", "does not compile")],
)
def test_a_bad_chat_template_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    template = tmp_path / "template.jinja"
    if content is not None:
        template.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--chat-template", str(template), "--log-level", "error"])
    assert message in str(info.value.code)
