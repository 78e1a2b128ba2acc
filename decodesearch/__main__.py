"""``python -m decodesearch``: same as the ``decodesearch`` command."""

import sys

from decodesearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
