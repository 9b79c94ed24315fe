"""Ctrl-C in the ``lvae`` process: one line, ``lvae: interrupted``, status 130, no partial output.

In the ``lvae`` process (the console script, ``python -m lvae``) a SIGINT handler is installed
as soon as :mod:`lvae.cli` starts loading (this module is its first import and imports only
``os``, ``signal`` and ``sys``). Before the command's ``main`` runs, a Ctrl-C ends the process
at once; inside ``main`` the first Ctrl-C unwinds (writes under way remove their temporary
files), a second one ends the process at once. Once ``main`` has finished (its outputs written,
their lines printed, the status known), Ctrl-C is ignored while the process exits: it could no
longer stop anything, and Python's shutdown would otherwise put back the default handler, which
kills the process with no line and status -2 (seen by tests/test_cli_safety.py). Called
in-process (``main(argv)``), ``main`` catches ``KeyboardInterrupt``, prints the same line and
returns 130.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

PROG = "lvae"
EXIT_INTERRUPTED = 130


def _started_as_command() -> bool:
    """True in the ``lvae`` console script and in ``python -m lvae`` (or ``-m lvae.cli``)."""
    entry = sys.modules.get("__main__")
    spec = getattr(entry, "__spec__", None)
    if spec is not None and spec.name in ("lvae.__main__", "lvae.cli", "lvae.cli.__main__"):
        return True
    return os.path.basename(getattr(entry, "__file__", None) or "") in ("lvae", "lvae.exe", "lvae-script.py")


class State:
    command = False  # this process is the lvae command and the handler below is installed
    in_main = False  # main() of the command is running: unwind on the first Ctrl-C
    seen = False  # a Ctrl-C came
    bar = False  # a progress bar may be on the terminal
    deferring = False  # inside deferred(): the first Ctrl-C waits for the end of the block


def exit_interrupted() -> None:
    """Remove partial outputs, print ``lvae: interrupted`` and end the process (status 130), now."""
    io = sys.modules.get("lvae.io")
    if io is not None:
        io.remove_partial_outputs()
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001  (e.g. a reentrant call: the lines already out stay out)
        pass
    end_bar = "\n" if State.bar and sys.stderr.isatty() else ""
    try:
        os.write(2, f"{end_bar}{PROG}: interrupted\n".encode())
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)


def _on_sigint(signum: int, frame: Any) -> None:
    if State.seen or not State.in_main:
        exit_interrupted()
    State.seen = True
    if not State.deferring:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a first Ctrl-C does not cut: it is raised when the block ends (a second one
    still ends the process at once). For an output and its line: written and printed, or neither."""
    if State.deferring or not State.command:
        yield
        return
    State.deferring = True
    try:
        yield
    finally:
        State.deferring = False
    if State.seen:
        raise KeyboardInterrupt


def finished() -> None:
    """The command's work is done: ignore Ctrl-C from now on (the handler Python's shutdown keeps)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError, AttributeError):
        pass


def quiet_unraisable(unraisable: Any) -> None:
    """A Ctrl-C that lands in a finaliser is not reported ("Exception ignored in ..."): main()
    sees the flag and stops."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


if _started_as_command():
    try:
        signal.signal(signal.SIGINT, _on_sigint)
        State.command = True
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGINT here
        pass
