"""Several sources behind one: the executor polls one thing and sees every notice in time order."""

from __future__ import annotations

from collections.abc import Sequence

from ember.spot.notices.notice import PreemptionNotice
from ember.spot.notices.source import NoticeSource


class MergedSource(NoticeSource):
    """Polls each of `sources` and returns their notices ordered by `received_at_s` (ties keep
    the order of `sources`). Notices are not deduplicated across sources: a preempt notice and a
    later loss of the same instance are two events the executor may both want."""

    def __init__(self, sources: Sequence[NoticeSource]) -> None:
        if not sources:
            raise ValueError("MergedSource.sources must not be empty")
        self._sources = tuple(sources)

    @property
    def sources(self) -> tuple[NoticeSource, ...]:
        return self._sources

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        notices = [n for src in self._sources for n in src.poll(now_s)]
        return sorted(notices, key=lambda n: n.received_at_s)  # stable: ties keep the source order

    def close(self) -> None:
        """Close every source, even if one fails to close (the first error is re-raised)."""
        if self._closed:
            return
        super().close()
        first: Exception | None = None
        for src in self._sources:
            try:
                src.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the rest
                first = first or exc
        if first is not None:
            raise first
