"""The CPU backend: any GGUF model through llama.cpp, with continuous batching.

Up to ``parallel`` jobs decode together in one llama.cpp context (:mod:`.llama_batcher`): each
step evaluates every generating job's next token in one ``llama_decode``, new jobs join
between steps, and finished or cancelled ones leave at once. Each job runs in a slot of the
KV cache (a sequence with its own stream of ``n_ctx`` cells, as llama-server's ``-np``
slots); a slot keeps its last prompt and output, and a new prompt goes where the most of it is
already evaluated, copied over from another slot when that saves enough work
(:mod:`.prefix_cache`). Each job samples with its own sampler (a native llama.cpp chain, or
greedy selection read off the logits: :mod:`.llama_sampler`) and, when it has one, its own
llguidance constraint.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Literal, TypeAlias

import anyio
import llama_cpp

from .chat_template import ChatTemplate
from .constraints import GrammarCompiler
from .cpu_features import amx_granted_by_kernel, machine_flags, unsupported_in_build
from .errors import ContextLengthExceeded, EngineError, UnsupportedBuild
from .grammar_sandbox import CompileBudget
from .handoff import Arrivals, ThreadedJob
from .llama_batcher import Batcher, LlamaMemory
from .llama_model import LlamaModel
from .llama_sampler import DryStages, make_sampler
from .llama_sequence import ReadyJob
from .prefix_cache import PrefixCache
from .protocol import Chat, EngineStats, GenerationRequest, ModelInfo, TokenPrompt
from .queued import QueuedEngine
from .sampling import DrySettings
from .threads import default_threads
from .tool_calls import detect_format, get_format

logger = logging.getLogger(__name__)

#: Context size when the caller gives none (or less, for a model trained on less): a
#: long-context model should not allocate a huge KV cache by default.
DEFAULT_MAX_CONTEXT = 8192
#: Jobs decoded together by default (llama-server's ``-np``).
DEFAULT_PARALLEL = 8
#: The KV cache holds ``n_ctx * parallel`` tokens by default, but at most this many bytes:
#: beyond it each job's window shrinks (as llama-server divides ``-c`` between its slots).
DEFAULT_CACHE_BYTES = 2 << 30
#: The smallest window a slot gets (llama.cpp rounds slots up to multiples of 256 cells).
MIN_SLOT = 256
#: Tokens one step evaluates at most: every generating job's next token plus a prompt chunk.
CHUNK_TOKENS = 512

#: Flash attention as llama-server's ``-fa`` chooses it. ``auto`` turns it on for the CPU:
#: faster (measured 1.3-2.5x here), but it sums attention in 16-bit floats, so log
#: probabilities differ from ``off`` by up to a few tenths of a nat.
FlashAttention: TypeAlias = Literal["auto", "on", "off"]
_FLASH_ATTENTION: dict[str, int] = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class LlamaCppEngine(QueuedEngine):
    """An :class:`~exloop.engine.protocol.Engine` running one GGUF model on the CPU.

    ``parallel`` jobs decode together, each in a slot of ``cache_tokens / parallel`` tokens of
    KV cache (default ``cache_tokens``: ``n_ctx * parallel``; without ``n_ctx``, at most 2 GiB
    of cache), which is also its context window; ``n_ctx`` caps the window. Without
    ``n_threads`` llama.cpp uses the physical cores this process may use (:mod:`.threads`);
    ``n_threads_batch`` (steps of more than one token: prompts, and every step with several
    jobs) defaults to ``n_threads``; ``flash_attn`` is llama-server's ``-fa``
    (:data:`FlashAttention`).
    The constructor loads the model and blocks: call it from a worker thread in async code.
    ``tool_call_format`` overrides the format detected from the chat template, and
    ``chat_template`` (Jinja source) the template the GGUF ships. ``grammar_budget`` bounds
    what compiling a constraint may cost.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        cache_tokens: int | None = None,
        flash_attn: FlashAttention = "auto",
        name: str | None = None,
        tool_call_format: str | None = None,
        grammar_budget: CompileBudget | None = None,
        chat_template: str | None = None,
    ) -> None:
        check_build()
        path = Path(model_path)
        if n_threads is None:
            choice = default_threads()
            n_threads = choice.threads
            logger.info("llama.cpp: %d threads (%s)", n_threads, choice.reason)
        self._model = model = LlamaModel(path)
        self._ctx: llama_cpp.llama_context_p | None = None
        #: What to free on close (or when loading fails half way), last made first.
        self._resources = ExitStack()
        self._resources.callback(model.close)
        try:
            window = n_ctx or min(DEFAULT_MAX_CONTEXT, model.n_ctx_train)
            slot = _slot_size(window, parallel, cache_tokens, model, asked=n_ctx is not None)
            self._ctx = _new_context(
                model,
                slot * parallel,
                parallel,
                (n_threads, n_threads_batch or n_threads),
                flash_attn,
            )
            self._resources.callback(self._free_context)
            # llama.cpp rounds each slot up to a multiple of 256 cells.
            slot = int(llama_cpp.llama_n_ctx_seq(self._ctx))
            self._n_ctx = min(window, slot)
            self._read_model(path, name, tool_call_format, grammar_budget, chat_template)
            self._resources.callback(self._grammars.close)
            self._resources.callback(self._dry_stages.close)
            memory = LlamaMemory(self._ctx)
            self._cache = PrefixCache(
                memory, slots=parallel, slot_size=slot, share=not model.recurrent
            )
            self._arrivals = Arrivals()
            self._batcher = Batcher(
                self._ctx,
                model,
                memory,
                self._cache,
                self._prepare,
                self._arrivals,
                parallel=parallel,
                chunk=max(CHUNK_TOKENS, parallel),
                mask_threads=n_threads,
            )
        except BaseException:
            self._resources.close()
            raise
        self._closing = False
        logger.info(
            "llama.cpp: %d jobs at once, each with a context of %d tokens (%d tokens of KV cache)",
            parallel,
            self._n_ctx,
            self._cache.size,
        )

    def _read_model(
        self,
        path: Path,
        name: str | None,
        tool_call_format: str | None,
        grammar_budget: CompileBudget | None,
        chat_template: str | None,
    ) -> None:
        """Read what the GGUF says about its chat template and tool calls."""
        model = self._model
        template_source = (
            model.metadata.get("tokenizer.chat_template", "")
            if chat_template is None
            else chat_template
        )
        self._bos_token = model.token_text(model.bos)
        format_name = tool_call_format or detect_format(template_source, model.special_tokens())
        self._template = ChatTemplate(
            template_source,
            bos_token=self._bos_token,
            eos_token=model.token_text(model.eos),
            tool_format=get_format(format_name),
        )
        self._info = ModelInfo(
            name=name or path.name.removesuffix(".gguf"),
            backend="llama.cpp",
            context_length=self._n_ctx,
            chat_template=template_source,
            tool_call_format=format_name,
            thinking=self._template.thinking,
        )
        self._grammars = GrammarCompiler(model.lltokenizer(), grammar_budget)
        self._dry_stages = DryStages(model.vocab, self._n_ctx)

    # -- Engine protocol, through QueuedEngine ---------------------------------------------

    def stats(self) -> EngineStats:
        running, queued = self._batcher.counts()
        return EngineStats(
            running=running,
            queued=queued,
            parallel=self._batcher.parallel,
            cache_used=self._cache.used,
            cache_size=self._cache.size,
        )

    def arriving(self) -> AbstractContextManager[None]:
        """Counted: the batcher's first step after an idle spell waits for requests on their
        way (see :meth:`Batcher._collect`)."""
        return self._arrivals.coming()

    def _enqueue(self, job: ThreadedJob) -> None:
        self._batcher.submit(job)

    def _prepare_dry(self, dry: DrySettings) -> None:
        self._dry_stages.prepare(dry)

    @property
    def _vocab_size(self) -> int:
        return self._model.n_vocab

    def _check_request(self, request: GenerationRequest) -> None:
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            self._check_fits(len(prompt.token_ids))

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        await anyio.to_thread.run_sync(self._batcher.close)
        self._resources.close()

    def _free_context(self) -> None:
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    # -- preparing jobs (on the batcher's preparing thread) ---------------------------------

    def _prepare(self, job: ThreadedJob) -> ReadyJob | None:
        request = job.request
        params = request.sampling
        tokens = self._prompt_ids(request)
        self._check_fits(len(tokens))
        # The output may run to the end of the context window, never past it.
        limit = self._n_ctx - len(tokens)
        if params.max_tokens is not None:
            limit = min(limit, params.max_tokens)
        if job.cancel_requested:
            return None  # before building anything costly
        constraint = (
            self._grammars.start(job.compiled_constraint)
            if job.compiled_constraint is not None
            else None
        )
        sampler = make_sampler(self._dry_stages, self._model.n_vocab, self._n_ctx, params, tokens)
        return ReadyJob(job, tokens, sampler, constraint, limit)

    def _check_fits(self, prompt_tokens: int) -> None:
        if prompt_tokens >= self._n_ctx:
            raise ContextLengthExceeded(
                f"The prompt takes {prompt_tokens} tokens; the context window holds "
                f"{self._n_ctx}, which leaves no room for output."
            )

    def _chat_tokens(self, chat: Chat) -> list[int]:
        text = self.render(chat)
        # Templates that write the BOS token themselves must not get a second one.
        add_bos = not (self._bos_token and text.startswith(self._bos_token))
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def check_build() -> None:
    """Refuse a llama.cpp library compiled for instructions this machine cannot run: it
    would die with SIGILL on the first prompt instead (see :mod:`.cpu_features`)."""
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    missing = unsupported_in_build(system_info, machine_flags(), amx_kernel=amx_granted_by_kernel())
    if missing:
        raise UnsupportedBuild(
            f"The installed llama-cpp-python was compiled for {', '.join(missing)}, which "
            "this machine's CPU or kernel does not enable, and would crash. Rebuild it for "
            "this machine with scripts/install.sh (or scripts/build_llama_cpp.py)."
        )


def _slot_size(
    window: int, parallel: int, cache_tokens: int | None, model: LlamaModel, *, asked: bool
) -> int:
    """Cells per slot: ``cache_tokens`` split between the slots, never more than ``window``.
    Without ``cache_tokens`` each slot holds a whole ``window``: the one ``asked`` for
    (``--n-ctx``) as given, the default one within :data:`DEFAULT_CACHE_BYTES`."""
    if cache_tokens is None:
        if asked:
            return max(MIN_SLOT, window)
        cache_tokens = DEFAULT_CACHE_BYTES // max(1, model.kv_bytes_per_token())
    return max(MIN_SLOT, min(window, cache_tokens // parallel))


def _new_context(
    model: LlamaModel,
    size: int,
    parallel: int,
    threads: tuple[int, int],
    flash_attn: FlashAttention,
) -> llama_cpp.llama_context_p:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = size
    params.n_batch = params.n_ubatch = max(CHUNK_TOKENS, parallel)
    params.n_seq_max = parallel
    params.n_threads, params.n_threads_batch = threads
    # A stream of cells per sequence: a job's attention reads only its own cells. (A unified
    # pool lets sequences share cells without copies, but then every job's attention scans
    # every cell in use: 12-25% slower at 16 jobs here, and far slower prompts.)
    params.kv_unified = False
    # Keep every position of sliding-window layers, so that a cached prefix stays whole.
    params.swa_full = True
    params.flash_attn_type = _FLASH_ATTENTION[flash_attn]
    params.no_perf = True
    ctx: llama_cpp.llama_context_p | None = llama_cpp.llama_init_from_model(model.handle, params)
    if not ctx:
        raise EngineError(
            f"llama.cpp cannot create a context with a {size}-token KV cache; lower "
            "--cache-tokens, --n-ctx or --parallel."
        )
    return ctx
