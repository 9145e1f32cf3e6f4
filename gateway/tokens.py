"""How many of a model's own tokens a prompt's characters make.

The gateway counts prompts without a tokenizer: characters divided by a ratio. The ratio
starts at 4 characters a token (close to cl100k on English) and is calibrated once per model
against the model's real tokenizer: a backend serving it is asked, through vLLM's
``/tokenize``, to count a text of chat prompts shipped with the gateway
(``data/calibration.txt``), and the ratio becomes that text's characters per token. One call
per model (per replica), retried after ``retry_s`` while it fails; each bounded by
``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from adapters.base import BackendTimeout, BackendUnreachable
from gateway.fleet import Fleet

DEFAULT_CHARS_PER_TOKEN = 4.0
# A ratio outside these bounds is a broken answer, not a tokenizer: it is not used.
MIN_CHARS_PER_TOKEN, MAX_CHARS_PER_TOKEN = 0.5, 16.0

log = logging.getLogger(__name__)


def calibration_text() -> str:
    return resources.files("gateway").joinpath("data/calibration.txt").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Scale:
    chars_per_token: float
    backend: str  # where it was calibrated
    tokens: int  # what the calibration text came to
    at: float  # wall-clock time of the calibration


class TokenScales:
    """Per model, the calibrated characters per token (the default until calibrated)."""

    def __init__(
        self,
        text: str | None = None,
        *,
        timeout_s: float = 5.0,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._text = calibration_text() if text is None else text
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self._scales: dict[str, Scale] = {}
        self._tried: dict[str, float] = {}  # model -> when last tried without success

    def chars_per_token(self, model: str) -> float:
        scale = self._scales.get(model)
        return DEFAULT_CHARS_PER_TOKEN if scale is None else scale.chars_per_token

    def scales(self) -> dict[str, Scale]:
        return dict(self._scales)

    async def calibrate(self, fleet: Fleet) -> None:
        """Calibrate every model the fleet serves that has no ratio yet (and has not failed
        within ``retry_s``), on one routable backend serving it; forget models gone."""
        known = fleet.known_models()
        for model in [m for m in self._scales if m not in known]:
            del self._scales[model]
        for model in [m for m in self._tried if m not in known]:
            del self._tried[model]
        now = self._clock()
        for model in sorted(known - self._scales.keys()):
            if now - self._tried.get(model, -self._retry_s) < self._retry_s:
                continue
            backends = fleet.healthy_for(model)
            if not backends:
                continue
            self._tried[model] = now
            backend = backends[0]
            try:
                count = await backend.adapter.tokenize(model, self._text, self._timeout_s)
            except (BackendUnreachable, BackendTimeout, ValueError) as exc:
                log.info("tokens: %s could not count for %s: %s", backend.name, model, exc)
                continue
            ratio = len(self._text) / count if count else 0.0
            if not MIN_CHARS_PER_TOKEN <= ratio <= MAX_CHARS_PER_TOKEN:
                log.warning(
                    "tokens: %s gave %d tokens for %s: not used", backend.name, count, model
                )
                continue
            self._scales[model] = Scale(ratio, backend.name, count, time.time())
            self._tried.pop(model, None)
            log.info(
                "tokens: %s counts %.2f characters a token (on %s)", model, ratio, backend.name
            )

    async def run(self, fleet: Fleet, interval_s: float) -> None:
        while True:
            await self.calibrate(fleet)
            await asyncio.sleep(interval_s)
