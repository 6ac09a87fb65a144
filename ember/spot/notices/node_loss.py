"""Deaths nobody announced: the executor reports a node it lost, the next poll carries the notice."""

from __future__ import annotations

import threading

from ember.spot.notices.notice import PreemptionNotice
from ember.spot.notices.source import NoticeSource


class NodeLoss(NoticeSource):
    """Fed by the executor (e.g. when Ray reports a node gone): `report(instance_id)` becomes a
    "terminated" notice on the next poll. Each instance is reported once; repeats are dropped,
    since a node dies only once and the executor may hear of it from several places."""

    def __init__(self, *, source: str = "node-loss") -> None:
        self._source = source
        # NOTE: reports arrive from whatever thread watches the cluster (Ray callbacks), polls from
        # the control loop: the lock keeps a report from landing between the swap and the clear.
        self._lock = threading.Lock()
        self._pending: list[tuple[str, float | None]] = []
        self._reported: set[str] = set()

    def report(self, instance_id: str, *, at_s: float | None = None) -> bool:
        """Record that `instance_id` died; `at_s` (monotonic) is when it was seen, or the next
        poll's time if None. Returns False if this instance was already reported."""
        if not instance_id:
            raise ValueError("NodeLoss.report: instance_id must not be empty")
        with self._lock:
            if instance_id in self._reported:
                return False
            self._reported.add(instance_id)
            self._pending.append((instance_id, at_s))
            return True

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        with self._lock:
            pending, self._pending = self._pending, []
        notices = [
            PreemptionNotice(
                instance_id=iid,
                kind="terminated",
                deadline_s=None,
                source=self._source,
                received_at_s=now_s if at is None else min(at, now_s),
            )
            for iid, at in pending
        ]
        return sorted(notices, key=lambda n: n.received_at_s)
