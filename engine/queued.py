"""What every backend that queues jobs for its own worker thread shares.

The Engine protocol's event-loop side is the same for such backends: a request is checked
(sampling parameters against the model's vocabulary and context, a token prompt's ids, the
constraint compiled by llguidance in a worker process) before any job exists, so
:meth:`~QueuedEngine.check` and :meth:`~QueuedEngine.submit` fail the same way; a job is a
:class:`~.handoff.ThreadedJob` carrying the compiled constraint; chats are tokenized off the
event loop. Only how a job reaches the worker, how a chat becomes tokens and
what else a backend refuses differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext

import anyio

from .chat_template import ChatTemplate
from .constraints import CompiledGrammar, GrammarCompiler
from .errors import GenerationFailed, InvalidParameter
from .handoff import ThreadedJob
from .protocol import Chat, EngineStats, GenerationRequest, ModelInfo, TokenPrompt
from .sampling import DrySettings


class QueuedEngine(ABC):
    """The Engine protocol over a worker thread that runs :class:`~.handoff.ThreadedJob`\\ s.

    A subclass sets ``_info``, ``_template``, ``_grammars`` and ``_closing = False`` while it
    loads its model, implements :meth:`aclose` (setting ``_closing`` and closing
    ``_grammars``), and provides:

    * :meth:`_enqueue`: hand a checked job to its worker;
    * :meth:`_prepare_dry`: the vocabulary scan of a DRY setting, done before queueing;
    * :meth:`_chat_tokens`: tokenize a rendered chat (called in a worker thread);
    * :attr:`_vocab_size`: the number of token ids a prompt may use;
    * :meth:`_check_request`: what else it refuses before any job, such as a
      prompt too long for the context.
    """

    _info: ModelInfo
    _template: ChatTemplate
    _grammars: GrammarCompiler
    _closing: bool

    @property
    def info(self) -> ModelInfo:
        return self._info

    def render(self, chat: Chat) -> str:
        return self._template.render(chat)

    async def count_tokens(self, chat: Chat) -> int:
        return len(await anyio.to_thread.run_sync(self._chat_tokens, chat))

    async def check(self, request: GenerationRequest) -> None:
        await self._compile(request)

    async def submit(self, request: GenerationRequest) -> ThreadedJob:
        compiled = await self._compile(request)
        dry = request.sampling.dry
        if dry.enabled:
            # Preparing DRY scans the vocabulary for each breaker (up to a second): never on
            # the worker thread, where it would hold up every other job.
            await anyio.to_thread.run_sync(self._prepare_dry, dry)
        if self._closing:
            raise GenerationFailed("The engine is shut down.")
        job = ThreadedJob(request, compiled)
        self._enqueue(job)
        return job

    @abstractmethod
    def stats(self) -> EngineStats: ...

    def arriving(self) -> AbstractContextManager[None]:
        """Nothing to note, unless the backend waits for arrivals (it then overrides this)."""
        return nullcontext()

    @abstractmethod
    async def aclose(self) -> None: ...

    # -- what a subclass provides ---------------------------------------------------------

    @abstractmethod
    def _enqueue(self, job: ThreadedJob) -> None:
        """Hand ``job`` to the worker, which runs it and reports through it."""

    @abstractmethod
    def _prepare_dry(self, dry: DrySettings) -> None:
        """Cache what the backend's DRY stage needs for ``dry``, so that the worker only
        copies it (called in a thread before the job is queued)."""

    @abstractmethod
    def _chat_tokens(self, chat: Chat) -> list[int]:
        """The token ids of ``chat`` rendered by :meth:`render`."""

    @property
    @abstractmethod
    def _vocab_size(self) -> int:
        """Token ids in a prompt must lie in ``[0, _vocab_size)``."""

    @abstractmethod
    def _check_request(self, request: GenerationRequest) -> None:
        """Raise an :class:`~.errors.EngineError` for what this backend cannot run; called
        after the sampling parameters and a token prompt's ids passed."""

    # -- shared checks and tokenizing ---------------------------------------------------

    async def _compile(self, request: GenerationRequest) -> CompiledGrammar | None:
        """Check ``request`` and compile its constraint (``None`` without one)."""
        vocab_size = self._vocab_size
        request.sampling.validate()
        request.sampling.check_model(vocab_size, self._info.context_length)
        prompt = request.prompt
        if isinstance(prompt, TokenPrompt) and any(
            not 0 <= t < vocab_size for t in prompt.token_ids
        ):
            raise InvalidParameter(
                f"Prompt token ids must lie in [0, {vocab_size}).", param="prompt"
            )
        self._check_request(request)
        if request.constraint is None:
            return None
        return await self._grammars.compile(request.constraint)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, a chat tokenized: for the worker, which may not run an
        empty prompt."""
        prompt = request.prompt
        ids = (
            list(prompt.token_ids) if isinstance(prompt, TokenPrompt) else self._chat_tokens(prompt)
        )
        if not ids:
            raise GenerationFailed("The prompt is empty.")
        return ids
