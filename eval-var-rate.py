#!/usr/bin/env python3
"""Rate–distortion evaluation of a variable-rate model or a classical codec (see lvae.evaluation)."""
import warnings

# compressai imports torch_geometric, which calls the deprecated torch.jit.script at import time.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from lvae.evaluation import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
