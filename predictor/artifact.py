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

FORMAT = "sluice-length-model/2"
PACKAGED = Path(__file__).resolve().parent / "artifacts" / "length-v2.json"


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


def encode(
    model: LengthModel, *, version: str, training: dict[str, Any], weights_name: str
) -> tuple[dict[str, Any], bytes]:
    """The manifest and the weights' bytes of ``model``."""
    buffer = io.BytesIO()
    arrays = model.arrays()
    arrays["ridge_idf"] = arrays["ridge_idf"].astype(np.float32)
    arrays["ridge_coef"] = arrays["ridge_coef"].astype(np.float32)
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    data = buffer.getvalue()
    manifest = {
        "format": FORMAT,
        "version": version,
        "schema": _schema(),
        "weights": weights_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "training": training,
    }
    return manifest, data


def save(
    model: LengthModel, manifest_path: Path, *, version: str, training: dict[str, Any]
) -> None:
    """Write ``NAME.npz`` and its manifest ``NAME.json``."""
    weights = manifest_path.with_suffix(".npz")
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest, data = encode(model, version=version, training=training, weights_name=weights.name)
    weights.write_bytes(data)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def load(manifest_path: Path = PACKAGED) -> Artifact:
    try:
        manifest_text = manifest_path.read_text()
    except OSError as exc:
        raise ArtifactError(f"cannot read model manifest {manifest_path}: {exc}") from exc
    manifest = check_manifest(manifest_text, str(manifest_path))
    weights = manifest_path.parent / str(manifest.get("weights", ""))
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read model weights {weights}: {exc}") from exc
    return decode(manifest, data, str(weights))


def check_manifest(text: str, where: str) -> dict[str, Any]:
    """A manifest of this format and this build's feature schema, or ArtifactError."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"cannot read model manifest {where}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where} is not a {FORMAT} manifest")
    if manifest.get("schema") != _schema():
        raise ArtifactError(
            f"{where} was trained on feature schema {manifest.get('schema')}, "
            f"this build computes {_schema()}"
        )
    return manifest


def decode(manifest: dict[str, Any], data: bytes, where: str) -> Artifact:
    """The model from checked ``manifest`` and its weights' bytes, if their hash matches."""
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise ArtifactError(f"{where} does not match the SHA-256 in its manifest")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            model = LengthModel.from_arrays({k: arrays[k] for k in arrays.files})
    except (ValueError, KeyError, OSError) as exc:
        raise ArtifactError(f"{where} is malformed: {exc}") from exc
    return Artifact(model, manifest)
