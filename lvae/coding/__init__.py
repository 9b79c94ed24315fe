"""Entropy coding: everything between a model's latents and a file's bytes.

* :mod:`~lvae.coding.rans` — CompressAI's rANS coder, loaded without the ``compressai`` package;
* :mod:`~lvae.coding.gaussian` — the discretized Gaussian: likelihoods, the shipped CDF tables,
  CDF indexes;
* :mod:`~lvae.coding.latent` — coding one latent tensor (what a model asks for);
* :mod:`~lvae.coding.portable` — checks that the decoder used the encoder's CDF indexes, and repair;
* :mod:`~lvae.coding.determinism` — arithmetic settings pinned while coding;
* :mod:`~lvae.coding.container` — file layouts (``lvae.bitstream``);
* :mod:`~lvae.coding.codec` — images ↔ files, rate targets (``lvae.codec``).

Imports run one way: rans → gaussian → portable → latent → container/codec; models import from
here, never the reverse.
"""
