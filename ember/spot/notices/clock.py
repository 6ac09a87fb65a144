"""Wall clock to monotonic clock: clouds give deadlines as UTC timestamps, the executor plans on
`time.monotonic()`, which NTP steps and leap smearing cannot move."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_utc(text: str) -> float:
    """An ISO-8601 timestamp (AWS: "2026-12-03T19:02:00Z") as POSIX seconds; no zone means UTC."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        # NOTE: datetime.fromisoformat accepts a trailing Z only from Python 3.11; we support 3.10
        text = text[:-1] + "+00:00"
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def wall_to_monotonic(wall_s: float, *, now_wall_s: float, now_mono_s: float) -> float:
    """The monotonic time of wall-clock instant `wall_s`, given one reading of both clocks taken
    together (`now_wall_s`, `now_mono_s`): the distance to it is the same on either clock."""
    return now_mono_s + (wall_s - now_wall_s)
