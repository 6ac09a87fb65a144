"""The live SpotServe tests run Ray in a loopback-only network namespace (``unshare -n``):
they need ray, root, ``unshare`` and ``ip``; elsewhere they are not collected."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
_READY = (
    importlib.util.find_spec("ray") is not None
    and os.geteuid() == 0
    and shutil.which("unshare") is not None
    and shutil.which("ip") is not None
)
collect_ignore_glob = [] if _READY else ["test_*.py"]
