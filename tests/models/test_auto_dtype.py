"""dtype="auto": bf16 on CPU only with native bf16 arithmetic; on CUDA the checkpoint's half
dtype where the GPU has it; explicit dtypes as given (docs/engine.md, "dtype=auto")."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from ember.models import hardware
from ember.models.config import ModelArchConfig
from ember.models.loader import load_model, resolve_checkpoint_dtype, resolve_dtype

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it
CHECKPOINT_DTYPES = [None, "float32", "bfloat16", "float16"]
EXPLICIT = {
    "float32": torch.float32,
    "fp32": torch.float32,
    torch.float32: torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    torch.bfloat16: torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    torch.float16: torch.float16,
}


def _config(torch_dtype: str | None) -> ModelArchConfig:
    return ModelArchConfig(
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=32,
        torch_dtype=torch_dtype,
    )


@pytest.fixture
def native_bf16(monkeypatch):
    """``native_bf16(flag)``: make the CPU detection answer ``flag``."""

    def set_flag(flag: bool) -> None:
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: flag)

    return set_flag


@pytest.fixture
def cuda_bf16(monkeypatch):
    """``cuda_bf16(flag)``: make ``torch.cuda.is_bf16_supported`` answer ``flag``; returns the
    list of kwargs it was called with."""
    calls = []

    def set_flag(flag: bool) -> list:
        def fake(*args, **kwargs):
            calls.append(kwargs)
            return flag

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake)
        return calls

    return set_flag


@pytest.fixture
def fresh_detection():
    hardware.detect_cpu_native_bf16.cache_clear()
    yield
    hardware.detect_cpu_native_bf16.cache_clear()


# ---- the rule ----------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint_dtype", CHECKPOINT_DTYPES)
def test_cpu_with_native_bf16_is_bfloat16(native_bf16, checkpoint_dtype):
    native_bf16(True)
    assert resolve_dtype("auto", _config(checkpoint_dtype), CPU) == torch.bfloat16


@pytest.mark.parametrize("checkpoint_dtype", CHECKPOINT_DTYPES)
def test_cpu_without_native_bf16_is_float32(native_bf16, checkpoint_dtype):
    native_bf16(False)
    assert resolve_dtype("auto", _config(checkpoint_dtype), CPU) == torch.float32


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("device", [CPU, CUDA], ids=["cpu", "cuda"])
@pytest.mark.parametrize("checkpoint_dtype", CHECKPOINT_DTYPES)
def test_explicit_dtypes_are_untouched(native_bf16, cuda_bf16, native, device, checkpoint_dtype):
    native_bf16(native)
    cuda_bf16(native)
    for dtype, expected in EXPLICIT.items():
        assert resolve_dtype(dtype, _config(checkpoint_dtype), device) == expected, dtype


@pytest.mark.parametrize(
    "checkpoint_dtype, gpu_bf16, expected",
    [
        ("bfloat16", True, torch.bfloat16),
        ("bfloat16", False, torch.float16),
        ("float16", True, torch.float16),
        ("float16", False, torch.float16),
        ("float32", True, torch.float32),
        ("float32", False, torch.float32),
        (None, True, torch.float32),
        (None, False, torch.float32),
    ],
)
def test_cuda_follows_the_checkpoint_and_the_gpu(native_bf16, cuda_bf16, checkpoint_dtype, gpu_bf16, expected):
    native_bf16(not gpu_bf16)  # the CPU's answer must not matter on CUDA
    calls = cuda_bf16(gpu_bf16)
    assert resolve_dtype("auto", _config(checkpoint_dtype), CUDA) == expected
    assert resolve_dtype("auto", _config(checkpoint_dtype), torch.device("cuda", 0)) == expected
    if checkpoint_dtype == "bfloat16":
        # emulated bf16 (pre-Ampere) does not count as support
        assert calls and all(c.get("including_emulation") is False for c in calls)


def test_load_model_auto_follows_the_detection(native_bf16, hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa")
    native_bf16(True)
    assert {p.dtype for p in load_model(path, dtype="auto").module.parameters()} == {torch.bfloat16}
    assert resolve_checkpoint_dtype(path) == torch.bfloat16
    native_bf16(False)
    assert {p.dtype for p in load_model(path, dtype="auto").module.parameters()} == {torch.float32}
    assert {p.dtype for p in load_model(path, dtype="bf16").module.parameters()} == {torch.bfloat16}
    assert resolve_checkpoint_dtype(path) == torch.float32


def test_describe_auto_dtype_names_the_choice(native_bf16, cuda_bf16):
    native_bf16(True)
    assert "-> bfloat16" in hardware.describe_auto_dtype("cpu")
    native_bf16(False)
    assert "-> float32" in hardware.describe_auto_dtype("cpu")
    cuda_bf16(False)
    assert "-> float16" in hardware.describe_auto_dtype("cuda", "bfloat16")


# ---- the detection -----------------------------------------------------------------------

X86_NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\nvmx flags\t: ept\nbugs\t\t: spectre_v1\n"


@pytest.mark.parametrize(
    "text, machine, expected",
    [
        (X86_NO_BF16, "x86_64", False),  # Ice Lake: AVX-512 + VNNI, no bf16
        ("flags\t\t: fpu avx2 fma\n", "x86_64", False),  # Zen 3
        ("flags\t\t: avx512f avx512_bf16\n", "x86_64", True),  # Zen 4, Cooper Lake
        ("flags\t\t: avx512f amx_tile amx_bf16 amx_int8\n", "x86_64", True),  # Sapphire Rapids
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", "aarch64", True),  # Neoverse V1
        ("processor\t: 0\nFeatures\t: fp asimd crc32 atomics\n", "aarch64", False),  # Neoverse N1
        ("flags\t\t: bf16\n", "x86_64", False),  # the arm name means nothing on x86
    ],
)
def test_flags_decide(tmp_path, text, machine, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    flags = hardware.cpu_flags(info)
    assert flags is not None
    assert hardware.flags_have_native_bf16(flags, machine) is expected


def test_missing_or_flagless_cpuinfo(tmp_path, monkeypatch, fresh_detection):
    assert hardware.cpu_flags(tmp_path / "absent") is None
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert hardware.cpu_flags(tmp_path / "empty") is None
    monkeypatch.delenv(hardware.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "absent")
    for probe, expected in ((lambda: True, True), (lambda: False, False)):
        monkeypatch.setattr(hardware, "_torch_probe", probe)
        hardware.detect_cpu_native_bf16.cache_clear()
        assert hardware.cpu_has_native_bf16() is expected
    monkeypatch.undo()
    monkeypatch.delenv(hardware.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "absent")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, _raise, raising=False)
    hardware.detect_cpu_native_bf16.cache_clear()
    assert hardware.cpu_has_native_bf16() is False  # a failing probe means no, not an error


def _raise():
    raise RuntimeError("probe failed")


def test_environment_override(monkeypatch):
    monkeypatch.setattr(hardware, "detect_cpu_native_bf16", lambda: pytest.fail("override ignored"))
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv(hardware.OVERRIDE_ENV, value)
        assert hardware.cpu_has_native_bf16() is expected
        assert resolve_dtype("auto", _config("float32"), CPU) == (torch.bfloat16 if expected else torch.float32)


def test_detection_agrees_with_this_machines_cpuinfo(monkeypatch, fresh_detection):
    """On this machine, the detection (without the test suite's override) says what
    /proc/cpuinfo's flags say, parsed here independently."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo")
    lines = [ln for ln in info.read_text().splitlines() if ln.split(":")[0].strip() in ("flags", "Features")]
    if not lines:
        pytest.skip("/proc/cpuinfo has no flags line")
    flags = set(lines[0].split(":", 1)[1].split())
    arm = platform.machine().lower() in ("aarch64", "arm64")
    expected = "bf16" in flags if arm else bool({"avx512_bf16", "amx_bf16"} & flags)
    monkeypatch.delenv(hardware.OVERRIDE_ENV, raising=False)
    assert hardware.detect_cpu_native_bf16() is expected
    assert hardware.cpu_has_native_bf16() is expected
    assert resolve_dtype("auto", _config("bfloat16"), CPU) == (torch.bfloat16 if expected else torch.float32)
    print(hardware.describe_auto_dtype("cpu"))
