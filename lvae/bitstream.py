"""Byte containers for coded images (public name of :mod:`lvae.coding.container`)."""
from .coding.container import *  # noqa: F401,F403
from .coding.container import __all__  # noqa: F401
