"""The R(D) upper-bound model of Duan et al. (ICIP 2023, "An Improved Upper Bound on the
Rate-Distortion Function of Images"): a variable-rate hierarchical VAE with continuous Gaussian
latents, used as a measuring instrument, not as a codec.

For an image x and a trade-off λ the model gives a posterior q(z | x) over its latents and a
decoder x̂(z). The rate ``KL(q(z | x) ‖ p(z))`` (nats, summed over the latent blocks, each block's
KL taken at the latents sampled above it) and the expected distortion ``E_q ‖x − x̂(z)‖²`` are
an achievable rate–distortion pair of the information R(D) function, so the curve they trace as λ
sweeps [4, 2048] upper-bounds R(D): a codec can, in theory, do at least as well. Nothing is
quantized or entropy-coded; :meth:`RDModel.compress` and friends raise a ``ValueError``.

The network is QARV's (ConvNeXt blocks modulated by a λ embedding, :mod:`.layers`) with
continuous latents: each latent block predicts a prior mean and standard deviation from the
feature above it, a posterior mean and standard deviation from that feature and the encoder's
feature of the same resolution, and adds a projection of ``z`` back into the feature. Means pass
through :func:`soft_sqrt`, standard deviations through a softplus of slope ln 2 (positive, ≈ 1 at 0).

Two ways to run it (:meth:`RDModel.forward`): ``posterior="sample"`` draws ``z = μ_q + σ_q·ε``
(training, and the measurement of the bound, seeded with ``generator``); ``posterior="mean"``
takes every latent at its posterior mean (noise-free: the authors' reference outputs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ConfigDict, ImageVAEBase
from .layers import ConvNeXtBlockAdaLN, LambdaEmbedding, patch_downsample, patch_upsample

__all__ = ["RDConfig", "RDLatentBlock", "RDModel", "soft_sqrt", "gaussian_kl", "Posterior"]

LOG2_E = math.log2(math.e)
Posterior = Literal["sample", "mean"]
POSTERIORS = ("sample", "mean")


def soft_sqrt(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """``sign(x)·|x|^(1 − tanh(|x|)/2)`` for ``|x| ≤ threshold``, else ``sign(x)·sqrt(|x|)``: close
    to the identity near 0, a signed square root for large values (the means of the latents)."""
    a = x.abs()
    # NOTE: |x| is floored at 1e-12 so that the power's gradient stays finite at x = 0 (sign(0) = 0
    # gives 0 there); values with |x| ≥ 1e-12 are unchanged.
    a_safe = a.clamp_min(1e-12)
    soft = torch.pow(a_safe, 1 - 0.5 * torch.tanh(a_safe))
    root = torch.sqrt(a + 1e-8)
    return torch.sign(x) * torch.where(a <= threshold, soft, root)


def gaussian_kl(mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """``KL(N(mq, sq²) ‖ N(mp, sp²))`` element-wise, in nats (means and standard deviations)."""
    return torch.log(sp) - torch.log(sq) + 0.5 * (sq.square() + (mq - mp).square()) / sp.square() - 0.5


@dataclass(frozen=True)
class RDConfig(ConfigDict):
    """Widths and depths of an R(D) model (defaults: the published ``rd_model_base``).

    Five encoder stages at 1/4, 1/8, ..., 1/64 of the input (a 4×4 patch embedding, then per stage
    ``enc_depths[i]`` ConvNeXt blocks, the stages linked by a ConvNeXt block followed by a 2×2
    patch merge). Five decoder stages top-down from 1/64, each of ``dec_num_latents[i]`` latent
    blocks (``dec_latent_dims[i]`` channels), linked by 2× sub-pixel layers, ending in a 4×
    sub-pixel layer to RGB. The latent blocks of a stage read the encoder's last feature of the
    same resolution. Every ConvNeXt block has kernel ``kernel_size`` and MLP ratio ``mlp_ratio``.
    """

    label = "R(D) model"

    enc_widths: tuple[int, ...] = (256, 512, 640, 768, 768)
    enc_depths: tuple[int, ...] = (6, 6, 6, 4, 4)
    dec_widths: tuple[int, ...] = (768, 768, 640, 512, 256)
    dec_num_latents: tuple[int, ...] = (1, 2, 3, 4, 5)
    dec_latent_dims: tuple[int, ...] = (32, 32, 32, 32, 32)
    kernel_size: int = 7
    mlp_ratio: float = 2.0
    embed_dim: int = 256
    lmb_range: tuple[float, float] = (4.0, 2048.0)
    max_lmb_embed: float = 8192.0  # ln(λ) is scaled so that this λ maps to the longest period
    im_shift: float = -0.4546259594901961  # ImageNet's mean and 1/std, as QARV
    im_scale: float = 3.67572653978347

    def __post_init__(self):
        for field in ("enc_widths", "enc_depths", "dec_widths", "dec_num_latents", "dec_latent_dims"):
            if len(getattr(self, field)) != 5:
                raise ValueError(f"the R(D) model has five stages (1/4 ... 1/64): {field} needs 5 entries")
        if min(self.dec_num_latents) < 1:
            raise ValueError("every decoder stage holds at least one latent block (dec_num_latents ≥ 1)")
        lo, hi = self.lmb_range
        if not (0 < lo < hi):
            raise ValueError(f"lmb_range must satisfy 0 < low < high, got {self.lmb_range}")

    @property
    def max_stride(self) -> int:
        return 4 * 2 ** (len(self.enc_widths) - 1)


class _ConvNeXtDown(ConvNeXtBlockAdaLN):
    """A ConvNeXt block, then a 2×2 patch merge to ``out_ch`` (``downsapmle``: the published name)."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, kernel_size: int, mlp_ratio: float):
        super().__init__(in_ch, embed_dim, kernel_size, mlp_ratio)
        self.downsapmle = patch_downsample(in_ch, out_ch, rate=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.downsapmle(super().forward(x, emb))


class RDLatentBlock(nn.Module):
    """One continuous latent of the hierarchy: prior p(z | z_above), posterior q(z | z_above, x),
    and the merge of ``z`` into the feature (parameters in the published state-dict order)."""

    def __init__(self, width: int, zdim: int, enc_width: int, embed_dim: int, kernel_size: int, mlp_ratio: float):
        super().__init__()
        self.zdim = zdim

        def cnb(d: int) -> ConvNeXtBlockAdaLN:
            return ConvNeXtBlockAdaLN(d, embed_dim, kernel_size, mlp_ratio)

        self.resnet_front = cnb(width)
        self.resnet_end = cnb(width)
        self.posterior0 = cnb(enc_width)
        self.posterior1 = cnb(width)
        self.posterior2 = cnb(width)
        self.post_merge = nn.Conv2d(width + enc_width, width, kernel_size=1)
        self.posterior = nn.Conv2d(width, 2 * zdim, kernel_size=3, padding=1)
        self.prior = nn.Conv2d(width, 2 * zdim, kernel_size=1)
        self.z_proj = nn.Conv2d(zdim, width, kernel_size=1)

    @staticmethod
    def _mean_std(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = t.chunk(2, dim=1)
        # softplus of slope ln 2: std 1 at 0, always positive (arXiv 2203.13751, section 4.2)
        return soft_sqrt(m), F.softplus(s, beta=math.log(2), threshold=12)

    def prior_params(self, f: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``resnet_front``; the new feature, the prior's mean and standard deviation."""
        f = self.resnet_front(f, emb)
        return (f, *self._mean_std(self.prior(f)))

    def posterior_params(self, f: torch.Tensor, enc: torch.Tensor, emb: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and standard deviation, from the prior's feature and the encoder's."""
        merged = torch.cat([self.posterior1(f, emb), self.posterior0(enc, emb)], dim=1)
        return self._mean_std(self.posterior(self.posterior2(self.post_merge(merged), emb)))

    def merge(self, f: torch.Tensor, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.resnet_end(f + self.z_proj(z), emb)

    def forward(self, f: torch.Tensor, enc: torch.Tensor, emb: torch.Tensor, posterior: Posterior = "sample",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The updated feature and this block's KL(q ‖ p) of each image, in nats (shape N)."""
        f, pm, ps = self.prior_params(f, emb)
        qm, qs = self.posterior_params(f, enc, emb)
        kl = gaussian_kl(qm, qs, pm, ps).flatten(1).sum(dim=1)
        z = qm if posterior == "mean" else qm + qs * _normal_like(qm, generator)
        return self.merge(f, z, emb), kl

    def sample(self, f: torch.Tensor, emb: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        f, pm, ps = self.prior_params(f, emb)
        return self.merge(f, pm + ps * _normal_like(pm, generator) * temperature, emb)


def _normal_like(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)


class _Encoder(nn.Module):
    """Holds ``enc_blocks`` (the published state-dict names)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.enc_blocks = nn.ModuleList(blocks)


class RDModel(ImageVAEBase, nn.Module):
    """The variable-rate R(D) upper-bound model (λ ∈ ``lmb_range``). Build it with
    :func:`lvae.get_model` (``get_model('rd_model_base', pretrained=True)``) or from an :class:`RDConfig`.

    It measures; it does not code: :meth:`forward` gives the rate (KL, nats) and the decoded
    image, and ``eval-var-rate.py --model rd_model_base`` sweeps λ to trace the bound
    (:mod:`lvae.eval.bound`). ``compress``, ``compress_file``, ``decompress`` and
    ``decompress_file`` raise a ``ValueError`` saying so.
    """

    #: What the model measures: an upper bound on R(D) (the result JSON's ``kind``).
    kind = "bound"
    #: A variable-rate model (the λ sweep of :func:`lvae.eval.lambdas.rate_points`).
    lambdas: tuple[float, ...] | None = None

    def __init__(self, config: RDConfig | None = None):
        super().__init__()
        cfg = config if config is not None else RDConfig()
        self.config = cfg
        self.name: str | None = None  # set by the registry
        self.lmb_range = (float(cfg.lmb_range[0]), float(cfg.lmb_range[1]))
        self.default_lmb = math.sqrt(self.lmb_range[0] * self.lmb_range[1])
        self.max_stride = cfg.max_stride
        self.im_shift, self.im_scale = cfg.im_shift, cfg.im_scale

        # NOTE: attributes in this order because it is the published state-dict order.
        self.bias = nn.Parameter(torch.zeros(1, cfg.dec_widths[0], 1, 1))
        self.encoder = _Encoder(self._encoder_layers(cfg))
        self.dec_blocks = nn.ModuleList(self._decoder_layers(cfg))
        self.lmb_embedding = LambdaEmbedding(cfg.embed_dim, max_lmb=cfg.max_lmb_embed)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _encoder_layers(cfg: RDConfig) -> list[nn.Module]:
        e, k, r = cfg.embed_dim, cfg.kernel_size, cfg.mlp_ratio
        widths = cfg.enc_widths
        layers: list[nn.Module] = [patch_downsample(3, widths[0], rate=4)]
        for i, (w, depth) in enumerate(zip(widths, cfg.enc_depths)):
            layers.extend(ConvNeXtBlockAdaLN(w, e, k, r) for _ in range(depth))
            if i < len(widths) - 1:
                layers.append(_ConvNeXtDown(w, widths[i + 1], e, k, r))
        return layers

    @staticmethod
    def _decoder_layers(cfg: RDConfig) -> list[nn.Module]:
        e, k, r = cfg.embed_dim, cfg.kernel_size, cfg.mlp_ratio
        widths, enc_widths = cfg.dec_widths, cfg.enc_widths[::-1]  # 1/64 first
        layers: list[nn.Module] = []
        for i, (w, n, zdim) in enumerate(zip(widths, cfg.dec_num_latents, cfg.dec_latent_dims)):
            layers.extend(RDLatentBlock(w, zdim, enc_widths[i], e, k, r) for _ in range(n))
            if i < len(widths) - 1:
                layers.append(patch_upsample(w, widths[i + 1], rate=2))
        layers.append(patch_upsample(widths[-1], 3, rate=4))
        return layers

    @property
    def latent_blocks(self) -> list[RDLatentBlock]:
        return [b for b in self.dec_blocks if isinstance(b, RDLatentBlock)]

    # -- λ ------------------------------------------------------------------------------------
    def sample_lmb(self, n: int) -> torch.Tensor:
        """Draw ``n`` λ values log-uniformly over ``lmb_range`` (training)."""
        lo, hi = (math.log(v) for v in self.lmb_range)
        return torch.exp(lo + (hi - lo) * torch.rand(n, device=self.bias.device))

    def lmb_tensor(self, lmb: float | Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
        """Check λ against ``lmb_range`` and return it as a float tensor of shape ``n``
        (drawn by :meth:`sample_lmb` when None)."""
        if lmb is None:
            return self.sample_lmb(n)
        t = torch.as_tensor(lmb, dtype=torch.float32).detach().reshape(-1).to(self.bias.device)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"got {t.numel()} λ values for a batch of {n} images")
        lo, hi = self.lmb_range
        bad = ~((t >= lo * (1 - 1e-6)) & (t <= hi * (1 + 1e-6)))  # float32 ends are the ends
        if bool(bad.any()):
            raise ValueError(f"λ={t[bad][0].item():g} is outside this model's range [{lo:g}, {hi:g}]")
        return t.contiguous()

    # -- networks ----------------------------------------------------------------------------
    def encode_features(self, x: torch.Tensor, emb: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder's last feature at each height (the latent blocks of that height read it)."""
        feats: dict[int, torch.Tensor] = {}
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.encoder.enc_blocks:
            x = block(x, emb) if isinstance(block, ConvNeXtBlockAdaLN) else block(x)
            feats[int(x.shape[2])] = x
        return feats

    def top_feature(self, n: int, h: int, w: int) -> torch.Tensor:
        """The decoder's input: the learned ``bias`` repeated over an ``h``×``w`` grid (1/64 scale)."""
        return self.bias.expand(n, -1, h, w).contiguous(memory_format=torch.channels_last)

    def _run_decoder(self, f: torch.Tensor, latent_fn: Callable[[RDLatentBlock, torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor:
        for block in self.dec_blocks:
            f = latent_fn(block, f) if isinstance(block, RDLatentBlock) else block(f)
        return f.contiguous()

    # -- measuring -----------------------------------------------------------------------------
    def forward(
        self,
        im: torch.Tensor,
        lmb: float | Sequence[float] | torch.Tensor | None = None,
        posterior: Posterior = "sample",
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rate–distortion statistics of a batch ``im`` (N×3×H×W in [0, 1], sides multiples of 64).

        ``lmb``: a scalar or one value per image in ``lmb_range``; drawn per image (log-uniform)
        when None. ``posterior``: ``"sample"`` (default) draws every latent from its posterior,
        ``z = μ + σ·ε`` with ``ε`` from ``generator`` (seeded: reproducible on one device type);
        ``"mean"`` takes every latent at its posterior mean (the noise-free pass of the authors'
        reference outputs, ``forward_end2end`` with zero noise). Returns ``kl`` (N×L nats, each
        block's Gaussian KL between posterior and prior), ``bpp`` (the mean over images of the KL
        in bits per pixel of ``im``: the rate of the bound, no entropy coding), ``x_hat`` (N×3×H×W,
        the decoder's output before :meth:`postprocess`), ``mse`` (target space [-1, 1]), ``psnr``
        (RGB [0, 1], clamped output), ``lmb``, ``rd`` (N: R + λ·D, nats per dimension) and ``loss``
        (its mean).
        """
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {', '.join(POSTERIORS)}, got {posterior!r}")
        self._check_image(im)
        n, _, h, w = im.shape
        lmb_t = self.lmb_tensor(lmb, n)
        emb = self.lmb_embedding(lmb_t)
        feats = self.encode_features(self.preprocess(im), emb)
        kls: list[torch.Tensor] = []

        def latent(block: RDLatentBlock, f: torch.Tensor) -> torch.Tensor:
            f, kl = block(f, feats[int(f.shape[2])], emb, posterior, generator)
            kls.append(kl)
            return f

        x_hat = self._run_decoder(self.top_feature(n, h // self.max_stride, w // self.max_stride), latent)
        return self.rd_statistics(im, x_hat, torch.stack(kls, dim=1), lmb_t)

    @torch.no_grad()
    def sample(self, n: int = 1, lmb: float | None = None, temperature: float = 1.0,
               latent_hw: tuple[int, int] = (4, 4), generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images from the prior; the output is ``64·latent_hw`` pixels, in [0, 1]."""
        emb = self.lmb_embedding(self.lmb_tensor(self.default_lmb if lmb is None else lmb, n))
        top = self.top_feature(n, *latent_hw)
        return self.postprocess(self._run_decoder(top, lambda b, f: b.sample(f, emb, temperature, generator)))

    # -- not a codec -----------------------------------------------------------------------------
    def _not_a_codec(self, *args: Any, **kwargs: Any) -> NoReturn:
        name = self.name or "the R(D) model"
        raise ValueError(f"{name} measures an upper bound on the rate–distortion function R(D) of images; it is "
                         f"not a codec and writes no files (measure the bound: eval-var-rate.py --model {name})")

    compress = compress_file = decompress = decompress_file = _not_a_codec
