"""``python -m lvae``: the ``lvae`` command (see :mod:`lvae.cli`)."""
import sys

from .cli import main

sys.exit(main())
