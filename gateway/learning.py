"""What the length predictor learns, shared by the replicas on one store.

Each replica appends its completed-request samples to the store; a retrain on any replica
trains on all of them, and a model it swaps in is published, so every replica loads the same
version. With the store away, a replica keeps its samples until it is back and retrains on
its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from gateway.state.store import ModelBlob, Store, StoreUnavailable
from predictor import artifact
from predictor.data import Sample, sample_from_row
from predictor.model import LengthModel
from predictor.online import SampleLog, to_jsonl

log = logging.getLogger(__name__)


class SharedLearning:
    def __init__(self, store: Store, samples: SampleLog, *, keep: int) -> None:
        self._store = store
        self._samples = samples
        self._keep = keep
        self._refused: str | None = None  # a shared version this build cannot load

    async def flush(self) -> None:
        """Share the samples recorded here since the last flush."""
        fresh = self._samples.take_unshared()
        if not fresh:
            return
        try:
            await self._store.push_samples(to_jsonl(fresh).splitlines(), self._keep)
        except StoreUnavailable:
            self._samples.give_back_unshared(fresh)

    async def recent(self) -> list[Sample]:
        """Every replica's samples, oldest first; this replica's alone with the store away."""
        await self.flush()
        try:
            lines = await self._store.recent_samples()
        except StoreUnavailable as exc:
            log.warning("shared samples unreachable, using this replica's: %s", exc)
            return self._samples.recent()
        return [sample_from_row(json.loads(line)) for line in lines]

    async def publish(self, model: LengthModel, version: str, training: dict[str, object]) -> None:
        manifest, weights = await asyncio.to_thread(
            artifact.encode,
            model,
            version=version,
            training=dict(training),
            weights_name=f"{version}.npz",
        )
        try:
            await self._store.put_model(ModelBlob(version, json.dumps(manifest), weights))
        except StoreUnavailable as exc:
            log.warning("could not share model %s; other replicas keep theirs: %s", version, exc)

    async def newer(self, current_version: str) -> artifact.Artifact | None:
        """The shared model if it is not ``current_version``; None if it is, or none is shared,
        or the store is away. A shared model this build cannot use is logged and skipped."""
        try:
            if await self._store.model_version() in (None, current_version, self._refused):
                return None
            blob = await self._store.get_model()
        except StoreUnavailable:
            return None
        if blob is None or blob.version == current_version:
            return None
        try:
            manifest = artifact.check_manifest(blob.manifest, f"shared model {blob.version}")
            return await asyncio.to_thread(
                artifact.decode, manifest, blob.weights, f"shared model {blob.version}"
            )
        except artifact.ArtifactError as exc:
            log.error("refusing the shared length model: %s", exc)
            self._refused = blob.version
            return None

    async def run(
        self,
        current_version: Callable[[], str],
        swap: Callable[[artifact.Artifact], None],
        interval_s: float,
    ) -> None:
        """Share samples and adopt a newer shared model, every ``interval_s``."""
        while True:
            await self.flush()
            found = await self.newer(current_version())
            if found is not None:
                swap(found)
                log.info("length model %s adopted from shared state", found.version)
            await asyncio.sleep(interval_s)
