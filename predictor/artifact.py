"""The model artifact: numeric arrays in an ``.npz`` (loaded with pickling disabled) beside a
JSON manifest that names the feature schema, the training metadata and the arrays' SHA-256.

Loading checks all three, so a corrupted, tampered or mismatched artifact is refused with a
message that says why, and no code from the file is ever run.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.features import DENSE_NAMES, HASH_BITS, SCHEMA
from predictor.model import QUANTILES, LengthModel

FORMAT = "sluice-length-model/1"
PACKAGED = Path(__file__).resolve().parent / "artifacts" / "length-v1.json"


class ArtifactError(Exception):
    """The artifact cannot be used; the message says why."""


@dataclass(frozen=True)
class Artifact:
    model: LengthModel
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def _schema() -> dict[str, Any]:
    return {
        "features": SCHEMA,
        "hash_bits": HASH_BITS,
        "dense": list(DENSE_NAMES),
        "quantiles": list(QUANTILES),
    }


def save(
    model: LengthModel, manifest_path: Path, *, version: str, training: dict[str, Any]
) -> None:
    """Write ``NAME.npz`` and its manifest ``NAME.json``."""
    buffer = io.BytesIO()
    arrays = model.arrays()
    arrays["ridge_idf"] = arrays["ridge_idf"].astype(np.float32)
    arrays["ridge_coef"] = arrays["ridge_coef"].astype(np.float32)
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    data = buffer.getvalue()
    weights = manifest_path.with_suffix(".npz")
    weights.write_bytes(data)
    manifest = {
        "format": FORMAT,
        "version": version,
        "schema": _schema(),
        "weights": weights.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "training": training,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def load(manifest_path: Path = PACKAGED) -> Artifact:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read model manifest {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("schema") != _schema():
        raise ArtifactError(
            f"{manifest_path} was trained on feature schema {manifest.get('schema')}, "
            f"this build computes {_schema()}"
        )
    weights = manifest_path.parent / str(manifest.get("weights", ""))
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read model weights {weights}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise ArtifactError(f"{weights} does not match the SHA-256 in {manifest_path}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            model = LengthModel.from_arrays({k: arrays[k] for k in arrays.files})
    except (ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"{weights} is malformed: {exc}") from exc
    return Artifact(model, manifest)
