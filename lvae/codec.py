"""Image ↔ bytes ↔ file (public name of :mod:`lvae.coding.codec`)."""
from .coding.codec import *  # noqa: F401,F403
from .coding.codec import __all__  # noqa: F401
