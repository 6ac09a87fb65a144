import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# NOTE: dtype="auto" is bf16 on CPUs with native bf16 (ember/models/hardware.py); most tests
# use the default dtype and fp32 tolerances, so pin "no native bf16" (inherited by worker
# processes). tests/models/test_auto_dtype.py tests the rule and the real detection.
os.environ.setdefault("EMBER_CPU_BF16", "0")
# NOTE: Triton kernels run on CPU tensors under its interpreter; the flag must be set before
# anything imports triton (torch.compile does), so here rather than in the test module.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def debug_llama(tmp_path_factory) -> Path:
    from ember.zoo.debug import make_debug_checkpoint

    return make_debug_checkpoint(tmp_path_factory.mktemp("debug-llama"), arch="llama")


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """variant -> checkpoint path, written once per session on first use."""
    from checkpoints import write_hf_checkpoint

    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            cache[variant] = write_hf_checkpoint(tmp_path_factory.mktemp(variant), variant)
        return cache[variant]

    return get
