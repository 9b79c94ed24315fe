"""Entropy model of a QARV latent (public name of :mod:`lvae.coding.gaussian`)."""
from .coding.gaussian import *  # noqa: F401,F403
from .coding.gaussian import __all__  # noqa: F401
