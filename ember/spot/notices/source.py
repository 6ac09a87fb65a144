"""The interface the live executor polls: every notice source looks the same from there."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ember.spot.notices.notice import PreemptionNotice


class NoticeSource(ABC):
    """A source of `PreemptionNotice`s.

    `poll(now_s)` is non-blocking (network sources wait at most their short timeout) and returns
    what became known since the last poll; each event is returned once, never again. `now_s` is the
    caller's monotonic clock (`time.monotonic()` live, any number in tests); notices' times are on it.
    A source must not raise for a transient failure of what it watches: it reports nothing instead.
    """

    _closed: bool = False

    @abstractmethod
    def poll(self, now_s: float) -> list[PreemptionNotice]:
        """Notices that became known since the last poll, in time order."""

    def close(self) -> None:
        """Release what the source holds (connections); polling afterwards raises RuntimeError."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def __enter__(self) -> NoticeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
