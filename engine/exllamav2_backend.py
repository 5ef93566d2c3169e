"""The GPU backend: EXL2 or plain safetensors models through ExLlamaV2's dynamic generator.

Jobs run with continuous batching over a paged KV cache when flash-attn (>= 2.5.7, with paged
attention) is installed: a job starts as soon as its pages fit, finished jobs free theirs at
once, and prompt pages already in the cache are reused (a ``previous_response_id`` follow-up,
or parallel jobs sharing a system prompt), which usage reports as ``cached_tokens``. Without
flash-attn, ExLlamaV2 runs unpaged: one job at a time, still reusing the previous prompt. The
mode is logged at start.

Everything that touches the generator runs on one thread (:mod:`.exllamav2_driver`); sampling
settings are planned in :mod:`.exllamav2_sampling` and applied to a fresh
``ExLlamaV2Sampler.Settings`` per job in :func:`sampler_settings`; constraints are
llguidance masks applied as an ``ExLlamaV2Filter`` (:mod:`.exllamav2_filter`), computed on the
filter pool while the GPU runs the forward pass.

This module imports torch and ExLlamaV2 (which builds its CUDA extension on first import):
import it only to load a model on a CUDA machine (:func:`.backends.open_engine` does).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import anyio
import numpy as np
import numpy.typing as npt
import torch
from exllamav2 import attn as exl_attn
from exllamav2.cache import (
    ExLlamaV2Cache,
    ExLlamaV2Cache_Q4,
    ExLlamaV2Cache_Q6,
    ExLlamaV2Cache_Q8,
    ExLlamaV2CacheBase,
)
from exllamav2.config import ExLlamaV2Config
from exllamav2.generator.dynamic import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob
from exllamav2.generator.filters.base import ExLlamaV2Filter
from exllamav2.generator.sampler import ExLlamaV2Sampler
from exllamav2.model import ExLlamaV2
from exllamav2.tokenizer.tokenizer import ExLlamaV2Tokenizer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .chat_template import ChatTemplate
from .constraints import ConstraintState, GrammarCompiler
from .errors import EngineError, InvalidParameter, ModelNotFound
from .exllamav2_driver import GeneratorDriver, NativeGenerator, PreparedJob, SampledLogprob
from .exllamav2_filter import GrammarFilterCore
from .exllamav2_sampling import (
    OutputPenalties,
    SamplerPlan,
    cap_new_tokens,
    fresh_state,
    plan_sampler,
)
from .exllamav2_vocab import ModelVocabulary, read_vocabulary
from .grammar_sandbox import CompileBudget
from .handoff import ThreadedJob
from .protocol import Chat, GenerationRequest, ModelInfo
from .queued import QueuedEngine
from .sampling import DrySettings
from .tool_calls import detect_format, get_format

logger = logging.getLogger(__name__)

CacheMode: TypeAlias = Literal["fp16", "q8", "q6", "q4"]

_CACHES: dict[str, Callable[..., ExLlamaV2CacheBase]] = {
    "fp16": ExLlamaV2Cache,
    "q8": ExLlamaV2Cache_Q8,
    "q6": ExLlamaV2Cache_Q6,
    "q4": ExLlamaV2Cache_Q4,
}

#: Context length when none is given (or less, for a model trained on less).
DEFAULT_MAX_SEQ_LEN = 8192
#: The default cache holds this many tokens at most (beyond one full context): enough for
#: ``max_batch_size`` jobs of a few thousand tokens on any GPU that fits an 8B model.
DEFAULT_CACHE_CAP = 65536

_PAGE = 256  # ExLlamaV2's page size; the cache size must be a multiple of it


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model on the GPU with its cache and tokenizer, as :func:`load_model` leaves it."""

    path: Path
    vocab: ModelVocabulary
    model: ExLlamaV2
    cache: ExLlamaV2CacheBase
    tokenizer: ExLlamaV2Tokenizer
    max_seq_len: int
    #: Tokens the cache holds, shared by all jobs (a multiple of 256).
    cache_tokens: int
    #: Paged attention (flash-attn) is available: jobs are batched.
    paged: bool
    #: Jobs generated together (1 when unpaged).
    max_batch_size: int


def load_model(
    model_dir: str | Path,
    *,
    cache_mode: CacheMode = "fp16",
    max_seq_len: int | None = None,
    max_batch_size: int = 8,
    cache_tokens: int | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a model directory onto the GPUs (blocks; shows a progress bar on stderr).

    ``cache_tokens`` sizes the KV cache shared by all jobs (default: ``max_seq_len *
    max_batch_size``, at most :data:`DEFAULT_CACHE_CAP`, at least one full context).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelNotFound(
            f"No model directory at {path}: the GPU backend loads a Hugging Face model "
            f"directory (EXL2 or safetensors weights, config.json, tokenizer.json).",
            param="model",
        )
    if cache_mode not in _CACHES:
        raise InvalidParameter(
            f"Unknown cache mode {cache_mode!r}; choose one of {', '.join(_CACHES)}.",
            param="cache_mode",
        )
    if not torch.cuda.is_available():
        raise EngineError("The GPU backend needs CUDA, and torch finds no CUDA device.")
    vocab = read_vocabulary(path)
    config = ExLlamaV2Config(str(path))
    seq_len = max_seq_len or min(vocab.trained_context, DEFAULT_MAX_SEQ_LEN)
    if seq_len < _PAGE:
        raise InvalidParameter(
            f"max_seq_len must be at least {_PAGE} tokens, got {seq_len}.", param="max_seq_len"
        )
    config.max_seq_len = seq_len
    # Prompt chunks must be whole cache pages in paged mode, and loading caps them at
    # max_seq_len: keep them a multiple of the page size below it.
    config.max_input_len = min(config.max_input_len, seq_len // _PAGE * _PAGE)
    config.max_attention_size = config.max_input_len**2
    paged = bool(exl_attn.has_flash_attn_with_paged) and not config.no_flash_attn
    batch = max_batch_size if paged else 1
    tokens = _cache_size(cache_tokens, seq_len, batch)
    logger.info(
        "ExLlamaV2 %s: %s",
        "paged" if paged else "unpaged",
        f"flash-attn paged attention, continuous batching of up to {batch} jobs "
        f"over a {tokens}-token {cache_mode} cache"
        if paged
        else "flash-attn >= 2.5.7 is not installed, so jobs run one at a time "
        f"(a {tokens}-token {cache_mode} cache)",
    )
    model = ExLlamaV2(config)
    cache = _CACHES[cache_mode](model, max_seq_len=tokens, lazy=True)
    _load(model, cache, path.name, progress)
    try:
        tokenizer = ExLlamaV2Tokenizer(config)  # type: ignore[no-untyped-call]
    except BaseException:
        model.unload()  # type: ignore[no-untyped-call]
        raise
    return LoadedModel(path, vocab, model, cache, tokenizer, seq_len, tokens, paged, batch)


class ExLlamaV2Engine(QueuedEngine):
    """An :class:`~exloop.engine.protocol.Engine` running one model on CUDA GPUs.

    :meth:`load` loads a model directory and blocks: call it from a worker thread in async
    code. ``tool_call_format`` overrides the format detected from the chat template;
    ``grammar_budget`` bounds what compiling a constraint may cost. The engine owns the model
    from then on: :meth:`aclose` unloads it.
    """

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        cache_mode: CacheMode = "fp16",
        max_seq_len: int | None = None,
        max_batch_size: int = 8,
        cache_tokens: int | None = None,
        name: str | None = None,
        tool_call_format: str | None = None,
        grammar_budget: CompileBudget | None = None,
        chat_template: str | None = None,
        progress: bool = True,
    ) -> ExLlamaV2Engine:
        """Load ``model_dir`` (see :func:`load_model`) and start the generator thread."""
        loaded = load_model(
            model_dir,
            cache_mode=cache_mode,
            max_seq_len=max_seq_len,
            max_batch_size=max_batch_size,
            cache_tokens=cache_tokens,
            progress=progress,
        )
        return cls(
            loaded,
            name=name,
            tool_call_format=tool_call_format,
            grammar_budget=grammar_budget,
            chat_template=chat_template,
        )

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        name: str | None = None,
        tool_call_format: str | None = None,
        grammar_budget: CompileBudget | None = None,
        chat_template: str | None = None,
    ) -> None:
        self._loaded = loaded
        self._vocab = vocab = loaded.vocab
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self._max_seq_len = loaded.max_seq_len
        self._cache_tokens = loaded.cache_tokens
        self._paged = loaded.paged
        self._batch = loaded.max_batch_size
        try:
            source = vocab.chat_template if chat_template is None else chat_template
            format_name = tool_call_format or detect_format(source, vocab.special_tokens)
            self._template = ChatTemplate(
                source,
                bos_token=vocab.bos_token,
                eos_token=vocab.eos_token,
                tool_format=get_format(format_name),
            )
            self._grammars = GrammarCompiler(vocab.lltokenizer, grammar_budget)
            self._info = ModelInfo(
                name=name or loaded.path.name,
                backend="exllamav2",
                context_length=loaded.max_seq_len,
                chat_template=source,
                tool_call_format=format_name,
                thinking=self._template.thinking,
            )
            self._padded_vocab = -(-loaded.model.config.vocab_size // 32) * 32
            self._page_size = _PAGE if loaded.paged else loaded.cache_tokens
            self._closing = False
            self._driver = GeneratorDriver(self._make_generator, self._prepare, vocab.pieces)
        except BaseException:
            self._model.unload()  # type: ignore[no-untyped-call]
            raise

    # -- Engine protocol, through QueuedEngine ---------------------------------------------

    @property
    def paged(self) -> bool:
        """Whether jobs run batched over a paged cache (flash-attn is installed)."""
        return self._paged

    def _enqueue(self, job: ThreadedJob) -> None:
        self._driver.submit(job)

    def _prepare_dry(self, dry: DrySettings) -> None:
        self._vocab.texts.containing(tuple(dry.sequence_breakers))

    @property
    def _vocab_size(self) -> int:
        return self._vocab.vocab_size

    def _check_request(self, request: GenerationRequest) -> None:
        # The prompt's length is checked when its job is prepared, against its cache share.
        return None

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        await anyio.to_thread.run_sync(self._driver.close)
        self._grammars.close()
        self._model.unload()  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()

    # -- preparing jobs ------------------------------------------------------------------

    def _chat_tokens(self, chat: Chat) -> list[int]:
        text = self.render(chat)
        bos = self._vocab.bos_token
        add_bos = self._vocab.add_bos and not (bos and text.startswith(bos))
        ids = self._tokenizer.encode(text, add_bos=add_bos, encode_special_tokens=True)
        return [int(t) for t in ids[0].tolist()]

    def _prepare(self, job: ThreadedJob) -> PreparedJob:
        """Runs on the driver thread: tokenize, plan, and build the native job."""
        request = job.request
        params = request.sampling
        ids = self._prompt_ids(request)
        max_new = cap_new_tokens(
            len(ids),
            params.max_tokens,
            max_seq_len=self._max_seq_len,
            cache_tokens=self._cache_tokens,
            max_batch_size=self._batch,
        )
        plan = plan_sampler(params, self._vocab.texts)
        constraint = (
            GrammarFilter(
                self._model,
                self._tokenizer,
                self._grammars.start(job.compiled_constraint),
                width=self._padded_vocab,
                stop_token_ids=self._vocab.stop_token_ids,
            )
            if job.compiled_constraint is not None
            else None
        )
        records: deque[SampledLogprob] | None = deque() if params.logprobs else None
        native = HookedJob(
            input_ids=torch.tensor([ids], dtype=torch.long),
            max_new_tokens=max_new,
            gen_settings=sampler_settings(plan, self._padded_vocab),
            seed=params.seed,
            stop_conditions=list(self._vocab.stop_token_ids),
            decode_special_tokens=True,
            filters=[constraint] if constraint is not None else [],
            identifier=job,
            hooks=SamplingHooks(
                vocab_size=self._vocab.vocab_size,
                prompt_tokens=len(ids),
                penalties=plan.output_penalties,
                records=records,
                top=params.top_logprobs,
            ),
        )
        page_size = self._page_size
        return PreparedJob(
            native=native,
            prompt_tokens=len(ids),
            cached_tokens=lambda: native.cached_pages * page_size + native.cached_tokens,
            constraint=constraint,
            logprobs=records,
        )

    def _make_generator(self, previous: NativeGenerator | None) -> NativeGenerator:
        if isinstance(previous, ExLlamaV2DynamicGenerator):
            for pool in (previous.sampling_pool, previous.filter_pool):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
        generator = ExLlamaV2DynamicGenerator(
            model=self._model,
            cache=self._loaded.cache,
            tokenizer=self._tokenizer,
            max_batch_size=self._batch,
            max_seq_len=self._max_seq_len,
            paged=self._paged,
        )
        if previous is None:
            generator.warmup()  # type: ignore[no-untyped-call]  # kernels autotune here
        return cast(NativeGenerator, generator)


def sampler_settings(plan: SamplerPlan, padded_vocab: int) -> ExLlamaV2Sampler.Settings:
    """A fresh ``Settings`` with every field set from ``plan`` (never ``clone()``, whose
    copies share the DRY state); ``padded_vocab`` is the width of the output layer."""
    settings = ExLlamaV2Sampler.Settings()
    for field_name, value in plan.settings_fields().items():
        setattr(settings, field_name, value)
    for field_name, value in fresh_state().items():
        setattr(settings, field_name, value)
    if plan.token_bias:
        bias = torch.zeros(padded_vocab, dtype=torch.float)
        for token_id, value in plan.token_bias:
            bias[token_id] = value
        settings.token_bias = bias
    else:
        settings.token_bias = None
    return settings


class GrammarFilter(GrammarFilterCore, ExLlamaV2Filter):
    """An llguidance constraint as an ExLlamaV2 filter (behaviour in the core)."""

    def __init__(
        self,
        model: ExLlamaV2,
        tokenizer: ExLlamaV2Tokenizer,
        state: ConstraintState,
        *,
        width: int,
        stop_token_ids: tuple[int, ...],
    ) -> None:
        ExLlamaV2Filter.__init__(self, model, tokenizer)
        GrammarFilterCore.__init__(self, state, width=width, stop_token_ids=stop_token_ids)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # The logits are on the CPU here; numpy's view shares their memory.
        self.apply_mask(logits.numpy())
        return logits


class SamplingHooks:
    """Per-job work on the raw logits, before ExLlamaV2's sampler changes them in place:
    the log probabilities of the model's own distribution, and OpenAI's frequency and
    presence penalties over the output tokens."""

    def __init__(
        self,
        *,
        vocab_size: int,
        prompt_tokens: int,
        penalties: OutputPenalties | None,
        records: deque[SampledLogprob] | None,
        top: int,
    ) -> None:
        self._vocab = vocab_size
        self._prompt = prompt_tokens
        self._penalties = penalties
        self._records = records
        self._top = top

    @property
    def active(self) -> bool:
        return self._penalties is not None or self._records is not None

    def before(self, logits: torch.Tensor, sequence: torch.Tensor) -> Callable[[int], None]:
        """Called with the job's ``(1, 1, vocab)`` logits; returns what to call with the
        sampled token."""
        row = logits[0, 0, : self._vocab].numpy()
        raw = row.copy() if self._records is not None else None
        if self._penalties is not None:
            output = sequence[0, self._prompt :].numpy()
            if output.size:
                ids, counts = np.unique(output[output < self._vocab], return_counts=True)
                row[ids] -= counts * self._penalties.frequency + self._penalties.presence
        return lambda token_id: self._record(raw, token_id)

    def _record(self, raw: npt.NDArray[np.float32] | None, token_id: int) -> None:
        if raw is None or self._records is None:
            return
        peak = float(raw.max())
        normalizer = peak + float(np.log(np.exp(raw - peak).sum()))
        top: tuple[tuple[int, float], ...] = ()
        if self._top > 0:
            best = np.argpartition(raw, -self._top)[-self._top :]
            best = best[np.argsort(-raw[best], kind="stable")]
            top = tuple((int(t), float(raw[t]) - normalizer) for t in best)
        logprob = float(raw[token_id]) - normalizer if token_id < raw.shape[0] else -np.inf
        self._records.append(SampledLogprob(token_id, logprob, top))


class HookedJob(ExLlamaV2DynamicJob):
    """An ExLlamaV2 job that runs :class:`SamplingHooks` around its sampling step."""

    def __init__(self, *, hooks: SamplingHooks, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hooks = hooks

    def receive_logits(self, logits: torch.Tensor) -> Any:
        if not self._hooks.active:
            return super().receive_logits(logits)
        sequence = self.sequences[0].sequence_ids.torch()  # type: ignore[no-untyped-call]
        after = self._hooks.before(logits, sequence)
        result = super().receive_logits(logits)
        after(int(result[0].item()))
        return result


def _cache_size(requested: int | None, max_seq_len: int, batch: int) -> int:
    tokens = requested or max(max_seq_len, min(max_seq_len * batch, DEFAULT_CACHE_CAP))
    tokens = max(tokens, max_seq_len)
    return -(-tokens // _PAGE) * _PAGE


def _load(model: ExLlamaV2, cache: ExLlamaV2CacheBase, label: str, progress: bool) -> None:
    """Load the weights and allocate the cache across the GPUs, with a progress bar."""
    if not progress:
        model.load_autosplit(cache)
        return
    with Progress(
        TextColumn("Loading {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        model.load_autosplit(cache, callback=advance)
