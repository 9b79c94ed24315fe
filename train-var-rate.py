#!/usr/bin/env python3
"""Train a model: a variable-rate one (QARV), or one member of a fixed-λ family (QRes-VAE: --lmb,
one run per λ); see docs/training.md and `python train-var-rate.py --help`.

Single GPU:  python train-var-rate.py --model qarv_base --batch_size 32
Two GPUs:    torchrun --nproc_per_node 2 train-var-rate.py --model qarv_base --batch_size 16
One member:  python train-var-rate.py --model qres34m --lmb 64
"""
from lvae.training import main

if __name__ == "__main__":
    raise SystemExit(main())
