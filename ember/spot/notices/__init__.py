"""Preemption notices from real sources, behind one interface (`NoticeSource.poll`) for the live
SpotServe executor: replayed traces, AWS/GCP metadata pollers, and node losses nobody announced.

    src = MergedSource([TraceReplayer(...), NodeLoss()])
    for notice in src.poll(time.monotonic()):
        ...  # notice.kind in {"preempt", "arrive", "terminated"}, deadline_s on the monotonic clock
"""

from ember.spot.notices.aws import AwsMetadataPoller, AwsPollerConfig
from ember.spot.notices.clock import parse_utc, wall_to_monotonic
from ember.spot.notices.gcp import GcpMetadataPoller, GcpPollerConfig
from ember.spot.notices.merged import MergedSource
from ember.spot.notices.metadata import MetadataPoller
from ember.spot.notices.node_loss import NodeLoss
from ember.spot.notices.notice import NoticeKind, PreemptionNotice
from ember.spot.notices.ray_nodes import RayNodeWatcher
from ember.spot.notices.source import NoticeSource
from ember.spot.notices.trace_replayer import (
    PAPER_SEGMENTS,
    HeldReplay,
    TraceReplayConfig,
    TraceReplayer,
    paper_segment,
)

__all__ = [
    "PAPER_SEGMENTS",
    "AwsMetadataPoller",
    "AwsPollerConfig",
    "GcpMetadataPoller",
    "GcpPollerConfig",
    "HeldReplay",
    "MergedSource",
    "MetadataPoller",
    "NodeLoss",
    "NoticeKind",
    "NoticeSource",
    "PreemptionNotice",
    "RayNodeWatcher",
    "TraceReplayConfig",
    "TraceReplayer",
    "paper_segment",
    "wall_to_monotonic",
    "parse_utc",
]
