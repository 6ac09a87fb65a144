"""`python -m ember.train ...` is `ember train ...`."""

import sys

from ember.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
