"""``python -m dispatcher``: the ``dispatcher`` command (see ``dispatcher.cli``)."""

import sys

from .cli import main

sys.exit(main())
