"""Process helpers shared by every multi-process part of Ember (inference ranks, training
ranks, profilers): a free loopback port and a rank exit that skips finalization."""

from __future__ import annotations

import os
import socket
import sys
from typing import NoReturn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_rank(code: int) -> NoReturn:
    """End a launched rank process without interpreter finalization.

    NOTE: gloo's worker threads can still own finished work objects (DTensor's functional
    collectives keep them registered); destroying them during finalization aborts the process
    ("terminate called without an active exception") after its work is done and written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
