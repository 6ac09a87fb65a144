"""GCP preemption (spot VM) notices from the metadata server, polled on the instance.

`GET /computeMetadata/v1/instance/preempted` with `Metadata-Flavor: Google` answers `FALSE`
until the VM is being preempted, then `TRUE`; GCP gives about 30 s from then to shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ember.spot.notices.metadata import MetadataPoller, check_poller_fields
from ember.spot.notices.notice import PreemptionNotice

logger = logging.getLogger(__name__)

GCP_METADATA_URL = "http://metadata.google.internal"
PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
FLAVOR_HEADERS = {"Metadata-Flavor": "Google"}


@dataclass(frozen=True, kw_only=True)
class GcpPollerConfig:
    """`notice_period_s`: time from the first `TRUE` to the VM's end (GCP documents ~30 s; the
    flag is set when the ACPI shutdown starts, so there is no timestamp to read)."""

    instance_id: str
    base_url: str = GCP_METADATA_URL
    timeout_s: float = 0.5
    poll_interval_s: float = 1.0
    notice_period_s: float = 30.0

    def __post_init__(self) -> None:
        check_poller_fields(
            "GcpPollerConfig",
            instance_id=self.instance_id,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            poll_interval_s=self.poll_interval_s,
        )
        if not self.notice_period_s >= 0:
            raise ValueError(f"GcpPollerConfig.notice_period_s must be >= 0, got {self.notice_period_s}")


class GcpMetadataPoller(MetadataPoller):
    """Watches this VM's `preempted` flag; one "preempt" notice, at the first `TRUE`."""

    source_name = "gcp-metadata"

    def __init__(self, config: GcpPollerConfig) -> None:
        super().__init__(
            instance_id=config.instance_id,
            base_url=config.base_url,
            timeout_s=config.timeout_s,
            poll_interval_s=config.poll_interval_s,
        )
        self.config = config
        self.preempted = False

    def _check(self, now_s: float) -> list[PreemptionNotice]:
        if self.preempted:
            return []  # a VM is preempted once; no need to keep asking
        resp = self._request("GET", PREEMPTED_PATH, FLAVOR_HEADERS)
        if resp is None:
            return []
        if resp.status_code != 200:
            self._error(f"GET {PREEMPTED_PATH}: HTTP {resp.status_code}")
            return []
        value = resp.text.strip().upper()
        if value not in ("TRUE", "FALSE"):
            self._error(f"GET {PREEMPTED_PATH}: unexpected body {resp.text[:200]!r}")
            return []
        self._ok()
        if value == "FALSE":
            return []
        self.preempted = True
        logger.info("%s (%s): preempted, %.0f s left", self.source_name, self.instance_id, self.config.notice_period_s)
        return [
            PreemptionNotice(
                instance_id=self.instance_id,
                kind="preempt",
                deadline_s=now_s + self.config.notice_period_s,
                source=self.source_name,
                received_at_s=now_s,
            )
        ]
