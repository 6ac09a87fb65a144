"""Request arrivals: SpotServe's query CSVs (`query_id,arrival_seconds,seq_len,byte_offset`) or
seeded Poisson / Gamma processes.

NOTE: SpotServe's `gen_query.py` draws Gamma inter-arrivals in ms with shape
`(1000 / rate) / cv` and scale `cv`, so its "cv" is not a coefficient of variation: the files
`query_*_cv6.txt` have a true CV of sqrt(cv * rate / 1000), about 0.05 (nearly regular).
`gamma_arrivals` here takes a true CV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ember.errors import InvalidInputError


@dataclass(frozen=True, kw_only=True)
class Arrival:
    request_id: int
    time_s: float
    prompt_len: int

    def __post_init__(self) -> None:
        if self.time_s < 0:
            raise ValueError(f"Arrival.time_s must be >= 0, got {self.time_s}")
        if self.prompt_len <= 0:
            raise ValueError(f"Arrival.prompt_len must be positive, got {self.prompt_len}")


def load_arrivals(path: str | Path) -> list[Arrival]:
    """Read a SpotServe query trace; sorted by arrival time."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InvalidInputError(f"arrivals file not found: {path}", param="arrivals") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read arrivals {path}: {exc}", param="arrivals") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(",")
        try:
            if len(parts) < 3:
                raise ValueError("too few fields")
            out.append(
                Arrival(request_id=int(float(parts[0])), time_s=float(parts[1]), prompt_len=int(float(parts[2])))
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"{path}:{lineno}: expected 'query_id,arrival_seconds,seq_len,byte_offset' ({exc}): {line!r}",
                param="arrivals",
            ) from None
    return sorted(out, key=lambda a: (a.time_s, a.request_id))


def _from_gaps(gaps: np.ndarray, prompt_len: int) -> list[Arrival]:
    times = np.cumsum(gaps)
    return [Arrival(request_id=i, time_s=float(t), prompt_len=prompt_len) for i, t in enumerate(times)]


def _check(rate: float, duration_s: float, prompt_len: int) -> int:
    if rate <= 0 or duration_s <= 0 or prompt_len <= 0:
        raise InvalidInputError(
            f"arrivals: rate ({rate}), duration ({duration_s}) and prompt_len ({prompt_len}) must be positive",
            param="arrivals",
        )
    return int(rate * duration_s * 1.5) + 16


def poisson_arrivals(*, rate: float, duration_s: float, prompt_len: int = 512, seed: int = 0) -> list[Arrival]:
    """Poisson arrivals at `rate` req/s over [0, duration_s)."""
    n = _check(rate, duration_s, prompt_len)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    return [a for a in _from_gaps(gaps, prompt_len) if a.time_s < duration_s]


def gamma_arrivals(*, rate: float, cv: float, duration_s: float, prompt_len: int = 512, seed: int = 0) -> list[Arrival]:
    """Gamma inter-arrivals with mean 1/rate and coefficient of variation `cv` (cv=1: Poisson)."""
    if cv <= 0:
        raise InvalidInputError(f"arrivals: cv must be positive, got {cv}", param="arrivals")
    n = _check(rate, duration_s, prompt_len)
    shape = 1.0 / cv**2
    gaps = np.random.default_rng(seed).gamma(shape, (1.0 / rate) / shape, n)
    return [a for a in _from_gaps(gaps, prompt_len) if a.time_s < duration_s]


def parse_arrivals(spec: str, *, duration_s: float, prompt_len: int = 512, seed: int = 0) -> list[Arrival]:
    """`PATH`, `poisson:RATE` or `gamma:RATE:CV` (generated over [0, duration_s))."""
    if spec.startswith(("poisson:", "gamma:")):
        kind, *nums = spec.split(":")
        try:
            values = [float(x) for x in nums]
        except ValueError:
            raise InvalidInputError(f"arrivals: bad number in {spec!r}", param="arrivals") from None
        if kind == "poisson" and len(values) == 1:
            return poisson_arrivals(rate=values[0], duration_s=duration_s, prompt_len=prompt_len, seed=seed)
        if kind == "gamma" and len(values) == 2:
            return gamma_arrivals(rate=values[0], cv=values[1], duration_s=duration_s, prompt_len=prompt_len, seed=seed)
        raise InvalidInputError(f"arrivals: expected poisson:RATE or gamma:RATE:CV, got {spec!r}", param="arrivals")
    return load_arrivals(spec)


def mean_rate(arrivals: list[Arrival]) -> float:
    """Requests per second over the span of the arrivals."""
    if len(arrivals) < 2:
        return 0.0
    span = arrivals[-1].time_s - arrivals[0].time_s
    return (len(arrivals) - 1) / span if span > 0 else 0.0
