"""`ember spot serve` refuses bad input with a message and a non-zero exit, before it starts Ray."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args,match",
    [
        (["--instances", "0"], "--instances must be >= 1"),
        (["--address", "127.0.0.1:1", "--trace", "t.csv"], "with --address the fleet is the cluster's nodes"),
        (["--policy", "fastest"], "policy"),
    ],
)
def test_bad_flags_are_refused(args, match):
    done = subprocess.run([sys.executable, "-m", "ember", "spot", "serve", *args], capture_output=True, text=True)
    assert done.returncode != 0 and match in done.stderr and "Traceback" not in done.stderr, done.stderr
