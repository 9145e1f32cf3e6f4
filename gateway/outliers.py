"""Passive outlier detection, in the manner of Envoy's: a backend whose responses keep failing
while its health probes pass is taken out of rotation for a while.

A failed response is one that broke after it started (a reset or a truncated stream), timed
out before its first byte, or answered a 5xx other than 503 (which is an engine's ordinary
"busy"). ``eject_after`` of them in a row eject the backend for ``eject_base_s`` times the
number of its ejections so far (at most ``eject_max_s``); once that has passed, the next probe
that passes lets it back in. A backend that has stayed in for ``eject_max_s`` starts again from
one. At most half the fleet (and always at least one backend) is out at once, so that a fault
of the gateway's own, or of every backend alike, cannot empty the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutlierRules:
    eject_after: int = 3
    eject_base_s: float = 10.0
    eject_max_s: float = 300.0
    max_ejected_share: float = 0.5


@dataclass(slots=True)
class OutlierState:
    """One backend's record of failed responses and ejections."""

    consecutive: int = 0
    ejections: int = 0  # ejections since it last stayed in for eject_max_s
    ejections_total: int = 0
    ejected_until: float | None = None
    reason: str | None = None
    back_since: float | None = None

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    def succeeded(self, now: float, rules: OutlierRules) -> None:
        self.consecutive = 0
        if self.back_since is not None and now - self.back_since >= rules.eject_max_s:
            self.ejections, self.back_since = 0, None

    def failed(self, reason: str, now: float, rules: OutlierRules, may_eject: bool) -> bool:
        """Count a failed response; True when it ejects the backend."""
        self.consecutive += 1
        if self.ejected or self.consecutive < rules.eject_after or not may_eject:
            return False
        self.ejections += 1
        self.ejections_total += 1
        length = min(rules.eject_base_s * self.ejections, rules.eject_max_s)
        self.ejected_until = now + length
        self.reason = f"{self.consecutive} failed responses in a row (last: {reason})"
        self.consecutive = 0
        return True

    def may_return(self, now: float) -> bool:
        return self.ejected_until is not None and now >= self.ejected_until

    def returned(self, now: float) -> None:
        self.ejected_until, self.reason, self.back_since = None, None, now


def may_eject(ejected: int, fleet_size: int, rules: OutlierRules) -> bool:
    """Whether one more backend may go out, with ``ejected`` of ``fleet_size`` already out."""
    return ejected == 0 or ejected + 1 <= rules.max_ejected_share * fleet_size
