#!/usr/bin/env python3
"""Train a variable-rate QARV model; see docs/training.md and `python train-var-rate.py --help`.

Single GPU:  python train-var-rate.py --model qarv_base --batch_size 32
Two GPUs:    torchrun --nproc_per_node 2 train-var-rate.py --model qarv_base --batch_size 16
"""
import warnings

# CompressAI (a dependency) calls torch.jit.script at import, which torch ≥ 2.10 reports on every start.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from lvae.training import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
