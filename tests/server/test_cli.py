"""The ``exloop`` command line: flags, their environment variables, start-up failures."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

import pytest
import uvloop

from exloop.server.cli import ServeSettings, build_parser, loop_options, main, parse_serve
from exloop.server.config import ConfigError, settings_actions

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
    "--api-key-file",
    "--metrics-public",
    "--cors-origins",
    "--sse-keepalive",
    "--log-format",
    "--log-requests",
    "--loop",
    "--config",
    "--search-provider",
    "--searxng-url",
    "--fetch-allow-private",
    "--n-ctx",
    "--threads",
    "--threads-batch",
    "--parallel",
    "--cache-tokens",
    "--flash-attn",
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
        api_keys=(),
        api_key_file=None,
        metrics_public=False,
        log_format="text",
        log_requests=False,
        cors_origins=(),
        sse_keepalive=15.0,
        search_provider="ddgs",
        searxng_url=None,
        fetch_allow_private=False,
        n_ctx=None,
        threads=None,
        threads_batch=None,
        parallel=8,
        cache_tokens=None,
        flash_attn="auto",
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
        "API_KEY": "k,l",
        "API_KEY_FILE": "/keys",
        "METRICS_PUBLIC": "1",
        "CORS_ORIGINS": "https://a.example, https://b.example",
        "SSE_KEEPALIVE": "2.5",
        "LOG_FORMAT": "json",
        "LOG_REQUESTS": "true",
        "LOOP": "asyncio",
        "SEARCH_PROVIDER": "searxng",
        "SEARXNG_URL": "http://searx",
        "FETCH_ALLOW_PRIVATE": "1",
        "N_CTX": "2048",
        "THREADS": "2",
        "THREADS_BATCH": "3",
        "PARALLEL": "4",
        "CACHE_TOKENS": "16384",
        "FLASH_ATTN": "off",
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
    assert {f"--{name.lower().replace('_', '-')}" for name in env} == set(FLAGS) - {"--config"}
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
        api_keys=("k", "l"),
        api_key_file=Path("/keys"),
        metrics_public=True,
        log_format="json",
        log_requests=True,
        cors_origins=("https://a.example", "https://b.example"),
        sse_keepalive=2.5,
        search_provider="searxng",
        searxng_url="http://searx",
        fetch_allow_private=True,
        n_ctx=2048,
        threads=2,
        threads_batch=3,
        parallel=4,
        cache_tokens=16384,
        flash_attn="off",
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
        loop="asyncio",
    )
    # A flag on the command line wins over its variable; a repeated one replaces its list.
    assert settings("--port", "9000", "--max-tool-rounds", "1").port == 9000
    assert settings("--api-key", "x", "--api-key", "y").api_keys == ("x", "y")


def test_the_event_loop_is_uvloop_unless_asked_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_options("auto") == loop_options("uvloop") == {"loop_factory": uvloop.new_event_loop}
    assert loop_options("asyncio") == {}
    # Where uvloop is missing (Windows), auto falls back and asking for it stops the start.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop_options("auto") == {}
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_options("uvloop")


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
        ["--log-format", "xml"],
        ["--loop", "trio"],
        ["--sse-keepalive", "-1"],
        ["--port8080"],
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
    ("variable", "value", "flag", "choice"),
    [
        ("LOOP", "trio", "--loop", "asyncio"),
        ("LOG_LEVEL", "verbose", "--log-level", "debug"),
        ("LOG_FORMAT", "xml", "--log-format", "json"),
        ("BACKEND", "tpu", "--backend", "llama.cpp"),
        ("SEARCH_PROVIDER", "bing", "--search-provider", "searxng"),
        ("FLASH_ATTN", "maybe", "--flash-attn", "off"),
        ("CACHE_MODE", "q2", "--cache-mode", "q8"),
    ],
)
def test_a_variable_outside_its_flag_s_choices_stops_start_up(
    variable: str,
    value: str,
    flag: str,
    choice: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """argparse checks choices only on the command line: a value from the environment is
    checked with the settings, before anything starts (an unknown log level used to end in
    a traceback, an unknown loop to serve on uvloop). ``main`` prints the ConfigError and
    exits with 2."""
    monkeypatch.setenv(f"EXLOOP_{variable}", value)
    with pytest.raises(ConfigError) as info:
        parse_serve([])
    assert f"EXLOOP_{variable}='{value}'" in str(info.value) and flag in str(info.value)
    # The flag on the command line still wins over its variable.
    assert getattr(parse_serve([flag, choice]), variable.lower()) == choice


# -- the configuration file -----------------------------------------------------------------


def clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in FLAGS:
        monkeypatch.delenv("EXLOOP_" + flag[2:].upper().replace("-", "_"), raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_precedence_is_flags_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_environment(monkeypatch)
    config = write(
        tmp_path / "exloop.toml",
        'port = 1111\nhost = "0.0.0.0"\nmax-tool-rounds = 3\nlog_format = "json"\n'
        'api-key = ["a", "b"]\nfetch-allow-private = true\nsse-keepalive = 0.5\n',
    )
    base = ["--config", str(config)]
    from_file = parse_serve(base, environ={})
    assert (from_file.port, from_file.host, from_file.max_tool_rounds) == (1111, "0.0.0.0", 3)
    assert from_file.log_format == "json" and from_file.api_keys == ("a", "b")
    assert from_file.fetch_allow_private and from_file.sse_keepalive == 0.5
    # The environment beats the file, a flag beats both; unset ones keep their defaults.
    monkeypatch.setenv("EXLOOP_PORT", "2222")
    monkeypatch.setenv("EXLOOP_API_KEY", "env-key")
    from_env = parse_serve(base)
    assert from_env.port == 2222 and from_env.api_keys == ("env-key",)
    assert from_env.host == "0.0.0.0"
    flagged = parse_serve([*base, "--port", "3333", "--api-key", "flag-key"])
    assert flagged.port == 3333 and flagged.api_keys == ("flag-key",)
    assert parse_serve(["--port=4444", *base]).port == 4444
    assert flagged.cache_mode == "fp16"  # default: set nowhere


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_environment(monkeypatch)
    monkeypatch.setenv("EXLOOP_CONFIG", str(write(tmp_path / "c.toml", "port = 5555\n")))
    assert parse_serve([]).port == 5555


def test_every_flag_is_a_config_key() -> None:
    """The keys come from the parser itself, so a flag added later is covered."""
    parser = build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    keys = set(settings_actions(serve))
    assert {flag[2:] for flag in FLAGS} - {"config"} <= keys
    # Exactly the flags `exloop serve --help` documents (flags added later included).
    documented = set(re.findall(r"--([a-z][a-z0-9-]+)", serve.format_help()))
    assert keys == documented - {"help", "config"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 8080\n", "unknown setting 'prot'"),
        ("[server]\nport = 8080\n", "unknown setting 'server'"),
        ("fetch-allow-private = 1\n", "'fetch-allow-private'"),
        ("port = [1, 2]\n", "'port'"),
        ("port = 70000\n", "must be a TCP port"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = write(tmp_path / "bad.toml", text)
    with contextlib.suppress(SystemExit):  # argparse exits 2 for a bad value
        assert main(["serve", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_config_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read the configuration file" in capsys.readouterr().err


def test_api_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = write(tmp_path / "keys", "# team keys\nalpha\n\n  beta  \n")
    loaded = parse_serve(["--api-key", "gamma", "--api-key-file", str(keys)], environ={}).keys()
    assert len(loaded) == 3 and loaded.identify(b"beta") and not loaded.identify(b"delta")
    assert "alpha" not in repr(loaded) and "gamma" not in repr(parse_serve(["--api-key", "gamma"]))
    empty = write(tmp_path / "empty", "# nothing\n")
    assert main(["serve", "--api-key-file", str(empty)]) == 2
    assert "holds no key" in capsys.readouterr().err


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
