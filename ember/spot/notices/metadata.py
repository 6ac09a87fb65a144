"""What the AWS and GCP pollers share: one HTTP client with short timeouts, a polling interval,
and the rule that a failed request is a counted, logged error and never a notice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import httpx

from ember.spot.notices.notice import PreemptionNotice
from ember.spot.notices.source import NoticeSource

logger = logging.getLogger(__name__)


def check_poller_fields(
    owner: str, *, instance_id: str, base_url: str, timeout_s: float, poll_interval_s: float
) -> None:
    """Validate the fields every metadata poller config has; raises ValueError naming the field."""
    if not instance_id:
        raise ValueError(f"{owner}.instance_id must not be empty")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"{owner}.base_url must start with http:// or https://, got {base_url!r}")
    if not timeout_s > 0:
        raise ValueError(f"{owner}.timeout_s must be > 0, got {timeout_s}")
    if not poll_interval_s >= 0:
        raise ValueError(f"{owner}.poll_interval_s must be >= 0, got {poll_interval_s}")


class MetadataPoller(NoticeSource):
    """Base of the pollers that run on one instance and watch its cloud metadata server.

    Subclasses implement `_check(now_s)`, which makes its requests through `_request` and returns
    the notices it found. `poll` calls it at most once per `poll_interval_s`."""

    source_name = "metadata"

    def __init__(
        self,
        *,
        instance_id: str,
        base_url: str,
        timeout_s: float,
        poll_interval_s: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance_id = instance_id
        self.base_url = base_url.rstrip("/")
        self.poll_interval_s = poll_interval_s
        self._wall_clock = wall_clock
        # NOTE: trust_env=False: a metadata server is link-local, and an HTTP(S)_PROXY from the
        # environment would send the request (and an IMDS token) somewhere else entirely.
        # No redirects either: the metadata server never redirects, so one would be an error.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), trust_env=False, follow_redirects=False)
        self._last_check_s: float | None = None
        self.errors = 0  # failed requests since start (network errors, unexpected statuses or bodies)
        self.consecutive_errors = 0  # since the last success; a streak means the server is down

    def poll(self, now_s: float) -> list[PreemptionNotice]:
        self._check_open()
        if self._last_check_s is not None and now_s - self._last_check_s < self.poll_interval_s:
            return []
        self._last_check_s = now_s
        return self._check(now_s)

    def _check(self, now_s: float) -> list[PreemptionNotice]:
        raise NotImplementedError

    def _request(self, method: str, path: str, headers: Mapping[str, str]) -> httpx.Response | None:
        """Send one request; None (error counted and logged) if it did not get a response."""
        try:
            return self._client.request(method, f"{self.base_url}{path}", headers=dict(headers))
        except httpx.HTTPError as exc:
            self._error(f"{method} {path}: {type(exc).__name__}: {exc}")
            return None

    def _ok(self) -> None:
        if self.consecutive_errors:
            logger.info("%s: metadata server answers again after %d errors", self.source_name, self.consecutive_errors)
        self.consecutive_errors = 0

    def _error(self, message: str) -> None:
        self.errors += 1
        self.consecutive_errors += 1
        # NOTE: a server that is down fails every poll; warn at the start of a streak and then at
        # 2, 4, 8, ... so the log shows that it lasts without one line per poll.
        n = self.consecutive_errors
        if n & (n - 1) == 0:
            logger.warning(
                "%s (%s): %s (no notice assumed; %d consecutive errors, %d in all)",
                self.source_name,
                self.instance_id,
                message,
                n,
                self.errors,
            )

    def close(self) -> None:
        if not self._closed:
            self._client.close()
        super().close()
