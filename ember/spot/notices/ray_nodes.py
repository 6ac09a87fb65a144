"""Instances as Ray sees them: a node that joins with an ``ember_instance_<id>`` resource is an
arrival, one that leaves without a notice is a termination. What a live deployment attached to a
running Ray cluster (``ember spot serve --address``) learns its fleet from."""

from __future__ import annotations

from collections.abc import Callable

from ember.spot.notices.notice import PreemptionNotice
from ember.spot.notices.source import NoticeSource


class RayNodeWatcher(NoticeSource):
    """Polls ``alive()`` (by default the alive Ray nodes' instance ids, see
    ``ember.spot.live.cluster.alive_instances``) at most every ``interval_s``; an id that
    appears is an "arrive" notice, one that disappears a "terminated" notice."""

    def __init__(
        self,
        *,
        alive: Callable[[], set[str]] | None = None,
        interval_s: float = 0.5,
        source: str = "ray-nodes",
    ) -> None:
        if not interval_s >= 0:
            raise ValueError(f"RayNodeWatcher.interval_s must be >= 0, got {interval_s}")
        if alive is None:
            from ember.spot.live.cluster import alive_instances

            alive = alive_instances
        self._alive, self._interval, self._source = alive, interval_s, source
        self._known: set[str] = set()
        self._last: float | None = None

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        if self._last is not None and now_s - self._last < self._interval:
            return []
        self._last = now_s
        alive = set(self._alive())
        arrived, gone = sorted(alive - self._known), sorted(self._known - alive)
        self._known = alive
        notice = {"source": self._source, "received_at_s": now_s, "deadline_s": None}
        return [PreemptionNotice(instance_id=i, kind="arrive", **notice) for i in arrived] + [
            PreemptionNotice(instance_id=i, kind="terminated", **notice) for i in gone
        ]
