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
    "--parallel",
    "--cache-tokens",
    "--flash-attn",
    "--log-level",
]


def settings(*argv: str) -> ServeSettings:
    return ServeSettings.from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in FLAGS:
        monkeypatch.delenv("EXLOOP_" + flag[2:].upper().replace("-", "_"), raising=False)
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
        parallel=8,
        cache_tokens=None,
        flash_attn="auto",
        max_seq_len=None,
        cache_mode="fp16",
        max_batch_size=8,
        log_level="info",
    )


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
        "PARALLEL": "4",
        "CACHE_TOKENS": "16384",
        "FLASH_ATTN": "off",
        "LOG_LEVEL": "debug",
        "BACKEND": "llama.cpp",
        "MAX_SEQ_LEN": "4096",
        "CACHE_MODE": "q4",
        "MAX_BATCH_SIZE": "2",
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
        parallel=4,
        cache_tokens=16384,
        flash_attn="off",
        max_seq_len=4096,
        cache_mode="q4",
        max_batch_size=2,
        log_level="debug",
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
