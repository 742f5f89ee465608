"""``python -m augmentbn``: the command line (also ``torchrun ... -m augmentbn train ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
