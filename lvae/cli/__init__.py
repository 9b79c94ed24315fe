"""The ``lvae`` command: compress and decompress images, inspect coded files, list models,
evaluate, plot and compare rate–distortion curves.

``lvae compress``, ``decompress`` and ``info`` handle each file on its own: a failure prints one
line ``lvae: error: <file>: <message>`` on stderr and the next file goes on. Ctrl-C prints
``lvae: interrupted`` and exits with status 130, leaving no partial output (:mod:`.interrupt`,
imported first so that its handler is in place before anything slow is imported).
"""
from __future__ import annotations

from . import interrupt  # noqa: F401  (first: installs the Ctrl-C handler in the lvae process)
from .coding import DEFAULT_MODEL
from .main import build_parser, main

__all__ = ["main", "build_parser", "DEFAULT_MODEL"]
