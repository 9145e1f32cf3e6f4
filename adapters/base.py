"""The protocol every backend engine adapter implements, and what it returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class BackendUnreachable(Exception):
    """Nothing came back from the backend: refused, reset or closed before the response headers.

    The request did no work upstream, so another backend may be tried.
    """


class BackendTimeout(Exception):
    """The backend accepted the request but did not answer in time."""


class StreamBroken(Exception):
    """The backend failed after the response had started."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What the engine reports of its own load; ``None`` where its metrics do not say."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    kv_capacity_tokens: int | None = None
    max_loras: int | None = None  # LoRA adapter slots (vLLM's --max-loras)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    healthy: bool
    models: tuple[Mapping[str, Any], ...] = ()
    load: EngineLoad | None = None
    error: str | None = None

    @property
    def model_ids(self) -> frozenset[str]:
        return frozenset(str(card["id"]) for card in self.models if "id" in card)


@dataclass(slots=True)
class StreamEvent:
    """One server-sent event as received (``raw`` is relayed byte for byte) and what it says."""

    raw: bytes
    data: Mapping[str, Any] | None = None
    done: bool = False
    tokens: int = 0
    text: str = ""  # the first choice's text in it
    usage: Mapping[str, Any] | None = None
    usage_only: bool = False
    error: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class UpstreamResponse(Protocol):
    """An answer whose headers have arrived; the body is read or streamed once."""

    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def events(self) -> AsyncIterator[StreamEvent]: ...

    def close(self) -> None: ...


class EngineAdapter(Protocol):
    """One backend server of some engine (vLLM, ...), as the gateway talks to it."""

    @property
    def base_url(self) -> str: ...

    def prepare(self, body: dict[str, Any], *, wants_usage: bool) -> dict[str, Any]:
        """The body to send upstream for a generation request."""
        ...

    async def send(
        self, method: str, path: str, body: bytes | None, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Send a request; raise BackendUnreachable or BackendTimeout before the headers."""
        ...

    async def probe(self, timeout_s: float) -> ProbeResult:
        """Health, served models and load, in one round of calls."""
        ...

    async def load_adapter(self, name: str, path: str, timeout_s: float) -> None:
        """Load the LoRA adapter at ``path`` as ``name``; raises BackendUnreachable,
        BackendTimeout, or ValueError for any answer but success."""
        ...

    async def unload_adapter(self, name: str, timeout_s: float) -> None:
        """Unload the LoRA adapter ``name``; raises as ``load_adapter`` does (an adapter the
        engine does not hold counts as unloaded)."""
        ...

    async def tokenize(self, model: str, text: str, timeout_s: float) -> int:
        """How many tokens ``model``'s tokenizer makes of ``text`` (no special tokens);
        raises BackendUnreachable, BackendTimeout, or ValueError for an answer without a
        count."""
        ...


def choice_text(payload: Mapping[str, Any]) -> str:
    """The text the first choice of a reply or of a streamed chunk carries (chat: the
    message's or the delta's content; completion: its text)."""
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return ""
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        message = choice.get("delta", choice.get("message"))
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        return text if isinstance(text, str) else ""
    return ""
