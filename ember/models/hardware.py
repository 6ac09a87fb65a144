"""What the CPU can do natively, for ``dtype="auto"`` (``ember.models.loader.resolve_dtype``).

WHY: without native bf16 instructions, PyTorch's CPU kernels have no fast bf16 path, so bf16
is much *slower* than fp32, not faster. Measured with torch 2.13 (CPU build):
on an AMD EPYC Zen 3 (AVX2, no AVX-512/AMX) a bf16 matmul is ~13x and a bf16 GEMV (batch-1
decode) ~50x slower than fp32. Intel Ice Lake Xeons (AVX-512 + VNNI, but no ``avx512_bf16``
and no AMX) are in the same position. Only CPUs with AVX-512 BF16 or AMX (x86) or the BF16
extension (aarch64) make bf16 pay off (~2.3x fp32 for a matmul on an AVX-512 BF16 EPYC), so
"auto" picks bf16 on CPU only there.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BF16_FLAGS = frozenset({"bf16"})
CPUINFO = Path("/proc/cpuinfo")
OVERRIDE_ENV = "EMBER_CPU_BF16"


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """The CPU feature flags of the first processor in ``cpuinfo`` (default /proc/cpuinfo; x86
    ``flags``, aarch64 ``Features``), or None when it is missing, unreadable or has no such line."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return None


def flags_have_native_bf16(flags: frozenset[str] | set[str], machine: str | None = None) -> bool:
    """Whether ``flags`` (from ``cpu_flags``) name native bf16 arithmetic on ``machine``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return bool(ARM_BF16_FLAGS & set(flags))
    return bool(X86_BF16_FLAGS & set(flags))


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes in bf16 natively (x86 ``avx512_bf16``/``amx_bf16``, aarch64
    ``bf16``): read from /proc/cpuinfo on Linux; elsewhere, or when it cannot be read, torch's
    own CPU probe where it has one (x86), else False (fp32 is the safe choice). Detection is
    cached; ``EMBER_CPU_BF16=1`` / ``=0`` overrides it (the test suite sets 0, so that its
    default-dtype runs are fp32 on every machine, worker processes included)."""
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    return detect_cpu_native_bf16()


@functools.cache
def detect_cpu_native_bf16() -> bool:
    """``cpu_has_native_bf16`` without the environment override (cached)."""
    flags = cpu_flags()
    if flags is not None:
        return flags_have_native_bf16(flags)
    return _torch_probe()


def _torch_probe() -> bool:
    try:
        import torch.cpu as tcpu

        probes = [getattr(tcpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(p()) for p in probes if p is not None)
    except Exception:  # private torch API: absent or failing means "unknown", i.e. no
        return False


def describe_auto_dtype(device="cpu", checkpoint_dtype: str | None = None) -> str:
    """One line saying what ``dtype="auto"`` resolves to on ``device`` and why."""
    import torch

    from ember.models.loader import resolve_auto_dtype

    device = torch.device(device)
    chosen = str(resolve_auto_dtype(checkpoint_dtype, device)).removeprefix("torch.")
    if device.type == "cpu":
        if os.environ.get(OVERRIDE_ENV, "").strip() in ("0", "1"):
            why = f"{OVERRIDE_ENV}={os.environ[OVERRIDE_ENV].strip()}"
        elif detect_cpu_native_bf16():
            why = "native bf16"
        else:
            why = "no native bf16: no avx512_bf16/amx_bf16 (x86) or bf16 (aarch64) flag"
        return f"dtype=auto on cpu -> {chosen} ({why})"
    return f"dtype=auto on {device} -> {chosen} (checkpoint torch_dtype={checkpoint_dtype})"
