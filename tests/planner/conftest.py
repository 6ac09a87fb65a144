import os
import random

import pytest

# NOTE: the machine is shared; every process these tests start (ranks included) uses one
# intra-op thread.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def rng():
    return random.Random(0)
