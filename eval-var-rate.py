#!/usr/bin/env python3
"""Rate–distortion evaluation of a variable-rate model or a classical codec: ``lvae eval`` as a
script (lvae.cli.evaluate; docs/evaluation.md)."""
from lvae.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
