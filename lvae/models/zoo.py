"""The built-in models: each entry function gives the architecture's arguments and builds it.

This module imports no torch: the network (:mod:`.qarv`) is imported when an entry function is
called, so listing models and their weights (``lvae models``) stays light. A new model plugs in
the same way from any module: ``@register_model(weights=Weights(...))`` on a function that
returns an ``nn.Module`` (see docs/architecture.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import Weights, register_model

if TYPE_CHECKING:
    from .qarv import QARV
    from .qres import QResVAE

__all__ = [
    "qarv_base", "qarv_small", "qarv_tiny", "QARV_SMALL_SHA256", "qres34m", "qres17m", "qres_tiny", "qres34m_lossless",
]

QARV_PAPER = "Duan et al., QARV: Quantization-Aware ResNet VAE for Lossy Image Compression, TPAMI 2023"


def _qarv(defaults: dict[str, Any], overrides: dict[str, Any]) -> QARV:
    from .qarv import QARV, QARVConfig

    return QARV(QARVConfig(**{**defaults, **overrides}))


@register_model(
    weights=Weights(
        filename="qarv_base-2022-dec-12.pt",
        url="https://huggingface.co/duanzh0/my-model-weights/resolve/main/qarv_base-2022-dec-12.pt",
        license="published by the QARV authors under their own terms (not covered by lvae's MIT license)",
        paper=QARV_PAPER,
    )
)
def qarv_base(**overrides: Any) -> QARV:
    """The published QARV model: 93,433,400 parameters, λ ∈ [16, 2048] (about 0.2–2.2 bpp on Kodak)."""
    return _qarv({}, overrides)


@register_model
def qarv_tiny(**overrides: Any) -> QARV:
    """A tiny QARV (same architecture, narrow and shallow) for fast CPU tests; no weights."""
    return _qarv(
        dict(
            enc_widths=(16, 24, 32, 32, 32),
            enc_depths=(1, 1, 1, 1, 1),
            enc_kernels=(7, 7, 5, 3, 1),
            dec_widths=(32, 32, 32, 24, 16),
            dec_num_latents=(1, 1, 1, 1),
            dec_latent_dims=(4, 4, 8, 4),
            dec_final_depth=1,
            embed_dim=64,
        ),
        overrides,
    )


# Trained by this project with train-var-rate.py on the CPU (BSDS500 + Sun-Hays 80, never Kodak);
# configs and logs in results/training/qarv_small*/ (see README). Shipped in the package.
QARV_SMALL_SHA256 = "97a5e5dd422650ab5b5da6a28692b3186a069db21d091c8cb4c1f5739bf3cd55"


@register_model(
    weights=Weights(
        filename="qarv_small.pt",
        package_file="data/weights/qarv_small.pt",
        sha256=QARV_SMALL_SHA256,
        license="MIT, like the lvae code (trained by the lvae project)",
        paper=QARV_PAPER,
    )
)
def qarv_small(**overrides: Any) -> QARV:
    """A small QARV (4.39 M parameters) sized for CPU training and coding; λ ∈ [16, 2048].

    ``pretrained=True`` loads the weights shipped inside the package (no network).
    """
    return _qarv(
        dict(
            enc_widths=(64, 96, 128, 128, 128),
            enc_depths=(2, 2, 2, 1, 1),
            dec_widths=(96, 96, 96, 64, 48),
            dec_num_latents=(1, 2, 2, 2),
            dec_latent_dims=(16, 16, 32, 8),
            dec_final_depth=2,
            embed_dim=128,
        ),
        overrides,
    )


# -- QRes-VAE: one network per λ ------------------------------------------------------------------
QRES_PAPER = "Duan et al., Lossy Image Compression with Quantized Hierarchical VAEs, WACV 2023"
_AUTHORS_WEIGHTS = "https://huggingface.co/duanzh0/my-model-weights/resolve/main"
_AUTHORS_TERMS = "published by the QRes-VAE authors under their own terms (not covered by lvae's MIT license)"
QRES34M_LAMBDAS = (16, 32, 64, 128, 256, 512, 1024, 2048)
QRES17M_LAMBDAS = (1, 2, 4, 8, 16, 32, 64, 1024)


def _qres(lmb: float, defaults: dict[str, Any], overrides: dict[str, Any]) -> QResVAE:
    from .qres import QResConfig, QResVAE

    return QResVAE(QResConfig(**{**defaults, **overrides}), lmb=lmb)


def _published(family: str, lmb: float) -> Weights:
    name = f"{family}-lmb{lmb:g}.pt"
    return Weights(filename=name, url=f"{_AUTHORS_WEIGHTS}/{family}/{name}", license=_AUTHORS_TERMS, paper=QRES_PAPER)


@register_model(lambdas=QRES34M_LAMBDAS, weights=lambda lmb: _published("qres34m", lmb))
def qres34m(lmb: float = 64, **overrides: Any) -> QResVAE:
    """QRes-VAE (34.0 M parameters), one network per λ ∈ {16, 32, ..., 2048}; trained on ImageNet crops."""
    return _qres(lmb, {}, overrides)


@register_model(
    weights=Weights(
        filename="qres34m-lossless.pt", url=f"{_AUTHORS_WEIGHTS}/qres34m/qres34m-lossless.pt", license=_AUTHORS_TERMS,
        paper=QRES_PAPER,
    )
)
def qres34m_lossless(**overrides: Any) -> QResVAE:
    """Lossless QRes-VAE (34.0 M parameters): qres34m's latents, then every 8-bit pixel coded exactly
    under a discretized Gaussian the network predicts; decodes to the source bit for bit."""
    return _qres(1.0, {"lossless": True}, overrides)


@register_model(lambdas=QRES17M_LAMBDAS, weights=lambda lmb: _published("qres17m", lmb))
def qres17m(lmb: float = 8, **overrides: Any) -> QResVAE:
    """QRes-VAE (16.7 M parameters) for 64×64 faces (CelebA), one network per λ ∈ {1, 2, 4, ..., 64, 1024}."""
    return _qres(
        lmb,
        dict(
            enc_widths=(144, 288, 288, 288),
            enc_depths=(6, 6, 4, 2),
            enc_kernels=(7, 5, 3, 1),
            enc_down=(2, 2, 4),
            dec_widths=(288, 288, 288, 144),
            dec_latents=(1, 2, 4, 5),
            dec_zdims=(16, 8, 6, 4),
            dec_kernels=(1, 3, 5, 7),
            dec_up=(("nearest", 4), ("deconv", 3), ("deconv", 5)),
            im_shift=-0.4356,  # CelebA's mean and 1/std
            im_scale=3.397893306150187,
        ),
        overrides,
    )


@register_model(lambdas=(16, 64, 256))
def qres_tiny(lmb: float = 64, **overrides: Any) -> QResVAE:
    """A tiny QRes-VAE (same architecture, narrow and shallow) for fast CPU tests; members λ ∈ {16, 64, 256},
    no weights."""
    return _qres(
        lmb,
        dict(
            enc_widths=(16, 24, 24, 24, 24),
            enc_depths=(1, 1, 1, 1, 1),
            dec_widths=(24, 24, 24, 24, 16),
            dec_latents=(1, 1, 1, 1, 1),
            dec_zdims=(4, 4, 4, 4, 4),
        ),
        overrides,
    )


# -- the R(D) upper-bound model: measures, does not code ------------------------------------------
if TYPE_CHECKING:
    from .rd import RDModel

__all__ += ["rd_model_base", "rd_model_tiny", "BOUND_MODELS"]

RD_PAPER = "Duan et al., An Improved Upper Bound on the Rate-Distortion Function of Images, ICIP 2023"

#: The built-in models that measure an upper bound on R(D) and code nothing (the command lines
#: refuse to compress with them and evaluate them with lvae.eval.bound).
BOUND_MODELS = ("rd_model_base", "rd_model_tiny")


def _rd(defaults: dict[str, Any], overrides: dict[str, Any]) -> RDModel:
    from .rd import RDConfig, RDModel

    return RDModel(RDConfig(**{**defaults, **overrides}))


@register_model(
    weights=Weights(
        filename="rd_model_base-200k-feb14-2023.pt",
        url=f"{_AUTHORS_WEIGHTS}/rd_model_base-200k-feb14-2023.pt",
        license="published by the R(D) model's authors under their own terms (not covered by lvae's MIT license)",
        paper=RD_PAPER,
    )
)
def rd_model_base(**overrides: Any) -> RDModel:
    """The published R(D) upper-bound model (186.7 M parameters), λ ∈ [4, 2048]: a measuring
    instrument, not a codec (published: −31.4 % BD-rate vs VTM 18.0 on Kodak)."""
    return _rd({}, overrides)


@register_model
def rd_model_tiny(**overrides: Any) -> RDModel:
    """A tiny R(D) model (same architecture, narrow and shallow) for fast CPU tests; no weights."""
    return _rd(
        dict(
            enc_widths=(16, 24, 32, 32, 32),
            enc_depths=(1, 1, 1, 1, 1),
            dec_widths=(32, 32, 32, 24, 16),
            dec_num_latents=(1, 1, 1, 1, 1),
            dec_latent_dims=(4, 4, 4, 4, 4),
            embed_dim=32,
        ),
        overrides,
    )


# -- lossless models: their files decode to the 8-bit source bit for bit ---------------------------
__all__ += ["qres_tiny_lossless", "LOSSLESS_MODELS"]

#: The built-in models that code losslessly (no λ to choose, no rate target): the command lines
#: know them by name, before any model is built; a plug-in says so with ``model.lossless``.
LOSSLESS_MODELS = ("qres34m_lossless", "qres_tiny_lossless")


@register_model
def qres_tiny_lossless(**overrides: Any) -> QResVAE:
    """qres_tiny's network ending in the lossless pixel output, for fast CPU tests; no weights (random
    weights still decode exactly: only the file's size depends on them)."""
    return qres_tiny(1.0, **{"lossless": True, **overrides})
