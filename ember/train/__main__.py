"""`python -m ember.train ...` is `ember train ...` (also as a torchrun rank)."""

import os
import sys

from ember.cli import main

if __name__ == "__main__":
    code = main(["train", *sys.argv[1:]])
    if "RANK" in os.environ:  # a launched rank: skip the finalization that can abort gloo
        from ember.distributed.process import exit_rank

        exit_rank(code)
    sys.exit(code)
