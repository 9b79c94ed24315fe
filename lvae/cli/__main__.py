"""``python -m lvae.cli`` (the same as ``python -m lvae``)."""
import sys

from .main import main

sys.exit(main())
