"""``python -m fastadapt ...``: the ``fastadapt`` command (:func:`fastadapt.cli.main`), with its exit status."""

import sys

from fastadapt.cli import main

if __name__ == "__main__":
    sys.exit(main())
