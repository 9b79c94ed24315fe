"""The line protocol between benchmarks/coding.py and its timing subprocesses.

A worker answers on stdout with lines that start with :data:`TAG` (anything else it or the code
it runs prints is ignored): ``ready ...`` once warm, ``error ...`` (one line) if it cannot run,
then, for each operation name read from stdin, the seconds it took. This module imports nothing
but the standard library, so the authors' worker (benchmarks/authors_worker.py), which must not
see this repository's ``lvae``, can use it too.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping

TAG = "@@lvae-bench "


def answer(text: str) -> None:
    print(f"{TAG}{text}", flush=True)


def serve(ops: Mapping[str, Callable[[], object]]) -> int:
    """Time one of ``ops`` per line read from stdin until an empty line or the end of input."""
    for line in sys.stdin:
        op = line.strip()
        if not op:
            break
        t0 = time.perf_counter()
        ops[op]()
        answer(f"{time.perf_counter() - t0:.6f}")
    return 0
