#!/usr/bin/env python3
"""Rate–distortion evaluation of a variable-rate model or a classical codec (see lvae.eval.evaluation)."""
from lvae.eval.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
