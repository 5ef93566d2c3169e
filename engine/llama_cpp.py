"""The CPU backend: any GGUF model through llama-cpp-python.

One dedicated worker thread owns the model and runs jobs one at a time, in submission order;
the event loop only queues jobs and reads their events (see :mod:`.handoff`). The token loop
is kept lean: llama.cpp evaluates and samples natively (:mod:`.llama_sampler`), and Python
adds per token only what a request asks for (a grammar mask, log probabilities) plus text
assembly. Between jobs the KV cache keeps the last prompt and output, so a prompt that
extends the previous one (the next turn of a conversation) only evaluates its new suffix.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import anyio
import llama_cpp
import numpy as np
import numpy.typing as npt
from llguidance import LLTokenizer
from llguidance.llamacpp import lltokenizer_from_vocab

from .chat_template import ChatTemplate
from .constraints import GrammarCompiler
from .cpu_features import amx_granted_by_kernel, machine_flags, unsupported_in_build
from .errors import (
    ContextLengthExceeded,
    EngineError,
    GenerationFailed,
    ModelNotFound,
    UnsupportedBuild,
)
from .grammar_sandbox import CompileBudget
from .handoff import ThreadedJob
from .llama_sampler import DryStages, NativeSampler
from .protocol import (
    Chat,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    TokenPrompt,
    TopLogprob,
    Usage,
)
from .queued import QueuedEngine
from .sampling import DrySettings
from .stop import TextStream
from .threads import default_threads
from .tool_calls import detect_format, get_format

logger = logging.getLogger(__name__)

#: Context size when the caller gives none (or less, for a model trained on less): a
#: long-context model should not allocate a huge KV cache by default.
DEFAULT_MAX_CONTEXT = 8192

_PIECE_BUFFER = 256


class LlamaCppEngine(QueuedEngine):
    """An :class:`~exloop.engine.protocol.Engine` running one GGUF model on the CPU.

    The constructor loads the model and blocks: call it from a worker thread in async code.
    ``tool_call_format`` overrides the format detected from the chat template, and
    ``chat_template`` (Jinja source) the template the GGUF ships. Without ``n_threads`` it
    uses the physical cores this process may use (:mod:`.threads`); ``n_threads_batch``
    (prompt evaluation) defaults to ``n_threads``. ``grammar_budget`` bounds what compiling a
    constraint may cost.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        name: str | None = None,
        tool_call_format: str | None = None,
        grammar_budget: CompileBudget | None = None,
        chat_template: str | None = None,
    ) -> None:
        check_build()
        path = Path(model_path)
        if not path.is_file():
            raise ModelNotFound(
                f"No model file at {path}. Pass --model PATH to a GGUF file, or run "
                f"`exloop fetch-model` to install the default model.",
                param="model",
            )
        if n_threads is None:
            choice = default_threads()
            n_threads = choice.threads
            logger.info("llama.cpp: %d threads (%s)", n_threads, choice.reason)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx or DEFAULT_MAX_CONTEXT,
                n_threads=n_threads,
                n_threads_batch=n_threads_batch or n_threads,
                logits_all=False,
                verbose=False,
            )
        except ValueError as exc:
            raise ModelNotFound(f"Cannot load the model at {path}: {exc}", param="model") from exc
        self._n_ctx = self._llm.n_ctx()
        if n_ctx is None:
            # Without an explicit size, never run past what the model was trained on.
            self._n_ctx = min(self._n_ctx, llama_cpp.llama_model_n_ctx_train(self._llm.model))
        try:
            self._read_model(path, name, tool_call_format, grammar_budget, chat_template)
        except BaseException:
            self._llm.close()
            raise
        self._jobs: queue.SimpleQueue[ThreadedJob | None] = queue.SimpleQueue()
        self._current: ThreadedJob | None = None
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="exloop-llama.cpp", daemon=True)
        self._worker.start()

    def _read_model(
        self,
        path: Path,
        name: str | None,
        tool_call_format: str | None,
        grammar_budget: CompileBudget | None,
        chat_template: str | None,
    ) -> None:
        """Read what the GGUF says about tokens, template and tool calls."""
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        # A recurrent state cannot be cut back to a prefix the way attention's KV cells can.
        self._prefix_reuse = not (
            llama_cpp.llama_model_is_recurrent(self._llm.model)
            or llama_cpp.llama_model_is_hybrid(self._llm.model)
        )
        self._eog = frozenset(
            t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)
        )
        self._piece_buffer = ctypes.create_string_buffer(_PIECE_BUFFER)
        self._pieces: dict[int, bytes] = {}

        metadata = self._llm.metadata
        template_source = (
            metadata.get("tokenizer.chat_template", "") if chat_template is None else chat_template
        )
        self._bos_token = self._token_text(self._llm.token_bos())
        format_name = tool_call_format or detect_format(template_source, self._special_tokens())
        self._template = ChatTemplate(
            template_source,
            bos_token=self._bos_token,
            eos_token=self._token_text(self._llm.token_eos()),
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
        self._grammars = GrammarCompiler(lltokenizer(self._llm), grammar_budget)
        self._dry_stages = DryStages(self._vocab, self._n_ctx)

    # -- Engine protocol, through QueuedEngine ---------------------------------------------

    def _enqueue(self, job: ThreadedJob) -> None:
        self._jobs.put(job)

    def _prepare_dry(self, dry: DrySettings) -> None:
        self._dry_stages.prepare(dry)

    @property
    def _vocab_size(self) -> int:
        return self._n_vocab

    def _check_request(self, request: GenerationRequest) -> None:
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt):
            self._check_fits(len(prompt.token_ids))

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        current = self._current
        if current is not None:
            current.cancel()
        self._jobs.put(None)
        await anyio.to_thread.run_sync(self._worker.join)
        self._grammars.close()
        self._dry_stages.close()
        self._llm.close()

    # -- helpers shared by the loop and the worker ----------------------------------------

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
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _piece(self, token_id: int) -> bytes:
        """The token's bytes, special tokens rendered as their text (cached)."""
        piece = self._pieces.get(token_id)
        if piece is None:
            n = llama_cpp.llama_token_to_piece(
                self._vocab, token_id, self._piece_buffer, _PIECE_BUFFER, 0, True
            )
            if n < 0:
                raise GenerationFailed(f"Token {token_id} does not fit the piece buffer.")
            piece = self._pieces[token_id] = self._piece_buffer.raw[:n]
        return piece

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self._piece(token_id).decode("utf-8", errors="replace")

    def _special_tokens(self) -> list[str]:
        special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        return [
            self._token_text(t)
            for t in range(self._n_vocab)
            if llama_cpp.llama_vocab_get_attr(self._vocab, t) & special
        ]

    # -- worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._current = job
            try:
                if self._closing or job.cancel_requested:
                    job.finish(Finish(reason="cancelled", usage=Usage(0, 0)))
                else:
                    self._generate(job)
            except EngineError as exc:
                job.fail(exc)
            except Exception as exc:  # a backend failure ends this job only
                logger.exception("generation failed")
                # The KV cache may hold a half-evaluated batch: forget it.
                self._llm.reset()  # type: ignore[no-untyped-call]
                job.fail(GenerationFailed(f"Generation failed: {exc}"))
            finally:
                self._current = None

    def _generate(self, job: ThreadedJob) -> None:
        request = job.request
        params = request.sampling
        tokens = self._prompt_ids(request)
        self._check_fits(len(tokens))
        constraint = (
            self._grammars.start(job.compiled_constraint)
            if job.compiled_constraint is not None
            else None
        )
        cached = self._evaluate_prompt(tokens)
        # The output may run to the end of the context window, never past it.
        limit = self._n_ctx - len(tokens)
        if params.max_tokens is not None:
            limit = min(limit, params.max_tokens)
        top_logprobs = params.top_logprobs if params.logprobs else -1

        if job.cancel_requested:
            # Cancelled while its prompt was evaluated: build no sampler for it.
            job.finish(Finish(reason="cancelled", usage=Usage(len(tokens), 0, cached)))
            return
        sampler = NativeSampler(self._dry_stages, self._n_vocab, self._n_ctx, params, tokens)
        text = TextStream(params.stop)
        produced = 0
        reason: FinishReason = "length"
        try:
            while produced < limit:
                if job.cancel_requested:
                    reason = "cancelled"
                    break
                logprob_of: Callable[[int], TokenLogprob] | None = None
                if constraint is not None or top_logprobs >= 0:
                    logits = self._last_logits()
                    if top_logprobs >= 0:
                        logprob_of = self._logprobs(logits, top_logprobs)
                    if constraint is not None:
                        constraint.mask_logits(logits)
                token_id = sampler.sample(self._llm.ctx)
                if token_id in self._eog:
                    reason = "eos"
                    break
                if constraint is not None:
                    constraint.consume(token_id)
                produced += 1
                emitted = text.push(self._piece(token_id))
                job.emit(
                    Delta(
                        text=emitted,
                        token_ids=(token_id,),
                        logprobs=(logprob_of(token_id),) if logprob_of is not None else (),
                    )
                )
                if text.stopped_by is not None:
                    reason = "stop"
                    break
                if constraint is not None and constraint.finished:
                    reason = "eos"
                    break
                if produced < limit:
                    self._llm.eval([token_id])
        finally:
            sampler.close()
        if reason != "stop":
            tail = text.finish()
            if tail:
                job.emit(Delta(text=tail))
        job.finish(
            Finish(
                reason=reason,
                usage=Usage(len(tokens), produced, cached),
                stop_sequence=text.stopped_by,
            )
        )

    def _evaluate_prompt(self, tokens: list[int]) -> int:
        """Bring the KV cache to ``tokens``, reusing the longest cached prefix; returns how
        many tokens were reused."""
        llm = self._llm
        if not self._prefix_reuse:
            llm.reset()  # type: ignore[no-untyped-call]
        reusable = min(llm.n_tokens, len(tokens) - 1)  # the last token is always evaluated
        cached_ids = llm.input_ids[:reusable]
        mismatches = np.flatnonzero(cached_ids != np.asarray(tokens[:reusable], dtype=np.intc))
        reused = int(mismatches[0]) if mismatches.size else reusable
        # Llama.eval drops the KV cells from n_tokens onwards before decoding.
        llm.n_tokens = reused
        llm.eval(tokens[reused:])
        return reused

    def _last_logits(self) -> npt.NDArray[np.float32]:
        """The last position's logits, as a writable view of llama.cpp's own buffer."""
        pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _logprobs(self, logits: npt.NDArray[np.float32], top: int) -> Callable[[int], TokenLogprob]:
        """Log probabilities under the model's own distribution (before penalties, filters
        and constraints), computed before the logits are masked."""
        peak = float(logits.max())
        logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))
        best: list[TopLogprob] = []
        if top > 0:
            candidates = np.argpartition(logprobs, -top)[-top:]
            for token_id in candidates[np.argsort(-logprobs[candidates], kind="stable")]:
                best.append(self._top_logprob(int(token_id), float(logprobs[token_id])))
        ranked = tuple(best)

        def logprob_of(token_id: int) -> TokenLogprob:
            piece = self._piece(token_id)
            return TokenLogprob(
                token=piece.decode("utf-8", errors="replace"),
                token_id=token_id,
                logprob=float(logprobs[token_id]),
                bytes=tuple(piece),
                top=ranked,
            )

        return logprob_of

    def _top_logprob(self, token_id: int, logprob: float) -> TopLogprob:
        piece = self._piece(token_id)
        return TopLogprob(
            token=piece.decode("utf-8", errors="replace"),
            token_id=token_id,
            logprob=logprob,
            bytes=tuple(piece),
        )


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


def lltokenizer(llm: llama_cpp.Llama) -> LLTokenizer:
    """llguidance's view of a loaded model's vocabulary (takes up to a second)."""
    with warnings.catch_warnings():
        # llguidance still calls llama_token_get_attr, which llama-cpp-python deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(llm.model))
