"""Admin routes of the output-length predictor: its version, its samples, retraining."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from gateway.api.context import RUNTIME
from gateway.errors import RetrainRunning
from predictor.data import load_samples
from predictor.online import retrain, to_jsonl


async def predictor_info(request: web.Request) -> web.Response:
    services = request.app[RUNTIME].services
    return web.json_response(
        {
            "version": services.lengths_version,
            "samples": len(services.samples),  # recorded by this replica
            "shared": services.learning is not None,
        }
    )


async def predictor_samples(request: web.Request) -> web.Response:
    """The recorded samples, in the data set's JSONL format."""
    samples = request.app[RUNTIME].services.samples.recent()
    return web.Response(text=to_jsonl(samples), content_type="application/x-ndjson")


async def predictor_retrain(request: web.Request) -> web.Response:
    """Train on recent traffic (every replica's, with shared state) blended with the base
    data; swap only if it scores better, and then publish it to the other replicas."""
    runtime = request.app[RUNTIME]
    services = runtime.services
    if runtime.retraining.locked():
        raise RetrainRunning("a retrain is already running")
    async with runtime.retraining:
        base_path = runtime.settings.predictor_base_data
        base = await asyncio.to_thread(load_samples, base_path) if base_path else []
        learning = services.learning
        recent = await learning.recent() if learning else services.samples.recent()
        outcome = await asyncio.to_thread(retrain, services.lengths, base, recent)
        if outcome.model is not None:
            services.lengths = outcome.model
            services.lengths_version = f"retrained-{int(time.time() * 1000)}"
            if learning is not None:
                await learning.publish(
                    outcome.model, services.lengths_version, {"retrain": outcome.report()}
                )
    return web.json_response({**outcome.report(), "version": services.lengths_version})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/admin/predictor", predictor_info),
    ("GET", "/admin/predictor/samples", predictor_samples),
    ("POST", "/admin/predictor/retrain", predictor_retrain),
]
