"""The one event every notice source emits: an instance is about to go, has arrived, or is gone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

NoticeKind = Literal["preempt", "arrive", "terminated"]


@dataclass(frozen=True, kw_only=True)
class PreemptionNotice:
    """What a source learned about `instance_id` at `received_at_s` (monotonic clock, seconds).

    - "preempt": the cloud will take the instance back; it is gone by `deadline_s` (monotonic).
    - "arrive": the instance is up and usable.
    - "terminated": the instance died with no notice (e.g. Ray reported its node gone).

    `deadline_s` is set for "preempt" only; `source` names who said so (e.g. "aws-imds")."""

    instance_id: str
    kind: NoticeKind
    deadline_s: float | None
    source: str
    received_at_s: float

    def __post_init__(self) -> None:
        if not self.instance_id:
            raise ValueError("PreemptionNotice.instance_id must not be empty")
        if self.kind not in ("preempt", "arrive", "terminated"):
            raise ValueError(f"PreemptionNotice.kind must be preempt|arrive|terminated, got {self.kind!r}")
        if not self.source:
            raise ValueError("PreemptionNotice.source must not be empty")
        if not math.isfinite(self.received_at_s):
            raise ValueError(f"PreemptionNotice.received_at_s must be finite, got {self.received_at_s}")
        if self.kind == "preempt":
            if self.deadline_s is None or not math.isfinite(self.deadline_s):
                raise ValueError(
                    f"PreemptionNotice.deadline_s must be a finite time for preempt, got {self.deadline_s}"
                )
            if self.deadline_s < self.received_at_s:
                raise ValueError(
                    f"PreemptionNotice.deadline_s ({self.deadline_s}) is before received_at_s ({self.received_at_s})"
                )
        elif self.deadline_s is not None:
            raise ValueError(f"PreemptionNotice.deadline_s must be None for {self.kind}, got {self.deadline_s}")

    @property
    def remaining_s(self) -> float | None:
        """Seconds between receipt and the deadline (None without one)."""
        return None if self.deadline_s is None else self.deadline_s - self.received_at_s
