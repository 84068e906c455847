"""``python -m babeltower.train CONFIG.yaml ...`` (e.g. under torchrun)."""

import sys

from babeltower.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
