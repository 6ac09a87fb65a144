"""AWS spot interruption notices from the instance metadata service (IMDS), polled on the instance.

`GET /latest/meta-data/spot/instance-action` is 404 until AWS decides to reclaim the instance,
then 200 with `{"action": "terminate"|"stop"|"hibernate", "time": "<UTC ISO-8601>"}`: the
instance goes at `time`, about two minutes later. IMDSv2 wants a session token from
`PUT /latest/api/token`; where that PUT is 404/405 (IMDSv1 only) the poller asks without one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ember.spot.notices.clock import parse_utc, wall_to_monotonic
from ember.spot.notices.metadata import MetadataPoller, check_poller_fields
from ember.spot.notices.notice import PreemptionNotice

logger = logging.getLogger(__name__)

AWS_METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ACTIONS = ("terminate", "stop", "hibernate")


@dataclass(frozen=True, kw_only=True)
class AwsPollerConfig:
    """`instance_id`: the live id this instance has in the executor. `poll_interval_s`: AWS
    suggests checking every 5 s, small against the 2-minute notice. `notice_period_s`: the
    deadline used when a notice's `time` cannot be read."""

    instance_id: str
    base_url: str = AWS_METADATA_URL
    timeout_s: float = 0.5
    poll_interval_s: float = 5.0
    token_ttl_s: int = 21600
    notice_period_s: float = 120.0

    def __post_init__(self) -> None:
        check_poller_fields(
            "AwsPollerConfig",
            instance_id=self.instance_id,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            poll_interval_s=self.poll_interval_s,
        )
        if not 1 <= self.token_ttl_s <= 21600:  # IMDS's own bounds
            raise ValueError(f"AwsPollerConfig.token_ttl_s must be in 1..21600, got {self.token_ttl_s}")
        if not self.notice_period_s >= 0:
            raise ValueError(f"AwsPollerConfig.notice_period_s must be >= 0, got {self.notice_period_s}")


class AwsMetadataPoller(MetadataPoller):
    """Watches this instance's spot `instance-action`; one "preempt" notice per distinct action
    document (AWS serves the same document on every poll until the instance is gone)."""

    source_name = "aws-imds"

    def __init__(self, config: AwsPollerConfig, *, wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(
            instance_id=config.instance_id,
            base_url=config.base_url,
            timeout_s=config.timeout_s,
            poll_interval_s=config.poll_interval_s,
            wall_clock=wall_clock,
        )
        self.config = config
        self._token: str | None = None
        self._token_expires_s = 0.0
        self.imds_v1 = False  # set once the token PUT says IMDSv2 is not there
        self._seen: set[tuple[str, str]] = set()

    def _check(self, now_s: float) -> list[PreemptionNotice]:
        resp = self._get_action(now_s)
        if resp is None:
            return []
        if resp.status_code == 401 and not self.imds_v1:
            # the token expired or the instance was restarted: get a fresh one and ask again once
            self._token = None
            resp = self._get_action(now_s)
            if resp is None:
                return []
        if resp.status_code == 404:
            self._ok()
            return []
        if resp.status_code != 200:
            self._error(f"GET {ACTION_PATH}: HTTP {resp.status_code}")
            return []
        return self._parse(resp.text, now_s)

    def _get_action(self, now_s: float) -> httpx.Response | None:
        headers = {}
        if not self.imds_v1:
            token = self._ensure_token(now_s)
            if token is None and not self.imds_v1:  # the PUT failed (counted); it did not switch us to v1
                return None
            if token is not None:
                headers[TOKEN_HEADER] = token
        return self._request("GET", ACTION_PATH, headers)

    def _ensure_token(self, now_s: float) -> str | None:
        """A valid IMDSv2 token, None on failure (error counted) or when IMDSv1 is all there is."""
        # renew ahead of expiry so a token never dies between our check and the GET
        if self._token is not None and now_s < self._token_expires_s:
            return self._token
        ttl = self.config.token_ttl_s
        resp = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(ttl)})
        if resp is None:
            return None
        if resp.status_code in (404, 405):
            # NOTE: only an explicit "no such endpoint" means IMDSv1; a network error or 5xx is a
            # hiccup and must not downgrade us for good
            logger.info(
                "%s (%s): token PUT answered %d, using IMDSv1", self.source_name, self.instance_id, resp.status_code
            )
            self.imds_v1 = True
            return None
        if resp.status_code != 200 or not resp.text.strip():
            self._error(f"PUT {TOKEN_PATH}: HTTP {resp.status_code}")
            return None
        self._token = resp.text.strip()
        self._token_expires_s = now_s + ttl - min(60.0, ttl / 2)
        return self._token

    def _parse(self, body: str, now_s: float) -> list[PreemptionNotice]:
        try:
            doc = json.loads(body)
            action = str(doc["action"])
            when = str(doc.get("time", ""))
        except (ValueError, KeyError, TypeError):
            self._error(f"GET {ACTION_PATH}: unreadable instance-action {body[:200]!r}")
            return []
        self._ok()
        key = (action, when)
        if key in self._seen:
            return []
        self._seen.add(key)
        if action not in ACTIONS:
            logger.warning(
                "%s (%s): unknown action %r, treated as a preemption", self.source_name, self.instance_id, action
            )
        deadline = now_s + self.config.notice_period_s
        try:
            deadline = wall_to_monotonic(parse_utc(when), now_wall_s=self._wall_clock(), now_mono_s=now_s)
        except ValueError:
            logger.warning(
                "%s (%s): unreadable time %r, assuming %.0f s",
                self.source_name,
                self.instance_id,
                when,
                self.config.notice_period_s,
            )
        # a deadline already past means we saw the notice late or the clock is off: the instance
        # is going now, which is the most the executor can plan with
        deadline = max(deadline, now_s)
        logger.info("%s (%s): %s notice, %.1f s left", self.source_name, self.instance_id, action, deadline - now_s)
        return [
            PreemptionNotice(
                instance_id=self.instance_id,
                kind="preempt",
                deadline_s=deadline,
                source=self.source_name,
                received_at_s=now_s,
            )
        ]
