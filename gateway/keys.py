"""Client API keys: who is calling ``/v1``.

A key reads ``sk-sluice-<id>-<secret>``: the id names its record, the secret is 32 random
bytes. The secret is shown once, when the key is created; the store keeps only its SHA-256
digest, beside the tenant it belongs to. Every replica mirrors the records (``KeyTable``)
and refreshes them with each config poll, so a revocation reaches every replica within
``SLUICE_CONFIG_POLL_S``. Checking a key is a dict look-up and one constant-time comparison
of digests; an unknown id is compared against a dummy digest, so that timing does not tell
a known id from an unknown one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace

PREFIX = "sk-sluice-"
_KEY = re.compile(r"^sk-sluice-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store keeps of one key (never its secret)."""

    id: str
    tenant: str
    name: str
    digest: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None or self.revoked_at > time.time()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeyRecord:
        raw = json.loads(text)
        return cls(
            id=str(raw["id"]),
            tenant=str(raw["tenant"]),
            name=str(raw.get("name", "")),
            digest=str(raw["digest"]),
            created_at=float(raw["created_at"]),
            revoked_at=None if raw.get("revoked_at") is None else float(raw["revoked_at"]),
        )

    def public(self) -> dict[str, object]:
        """The record as the admin API lists it: no digest."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }

    def revoked(self, at: float) -> KeyRecord:
        return replace(self, revoked_at=at)


def new_key(tenant: str, name: str = "") -> tuple[str, KeyRecord]:
    """A fresh key: (the key to hand out once, its record)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = f"{PREFIX}{key_id}-{secret}"
    return key, KeyRecord(key_id, tenant, name, _digest(key), time.time())


class KeyTable:
    """This replica's mirror of the stored key records."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}

    def replace_all(self, records: dict[str, KeyRecord]) -> None:
        self._records = dict(records)

    def records(self) -> list[KeyRecord]:
        return sorted(self._records.values(), key=lambda r: (r.tenant, r.created_at, r.id))

    def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    @property
    def configured(self) -> bool:
        """Whether keys are in use: once any key was made, revoking every one of them closes
        /v1 rather than opening it again."""
        return bool(self._records)

    def authenticate(self, key: str) -> KeyRecord | None:
        """The active record ``key`` proves, or None."""
        match = _KEY.match(key)
        record = self._records.get(match.group(1)) if match else None
        expected = record.digest if record is not None else _DUMMY
        ok = hmac.compare_digest(_digest(key), expected)
        if record is None or not ok or not record.active:
            return None
        return record
