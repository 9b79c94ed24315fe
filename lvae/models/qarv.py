"""QARV: the variable-rate hierarchical VAE of Duan et al. (TPAMI 2023).

The network is built from a :class:`QARVConfig`; ``qarv_base`` is the published configuration.
The model exposes one method per job: :meth:`QARV.forward` (training / evaluation statistics),
:meth:`QARV.sample`, :meth:`QARV.compress_latents` and :meth:`QARV.decompress_latents`
(entropy-coded latent strings). Files and byte containers (``compress``, ``decompress``,
``compress_file``, ``decompress_file``) come from :class:`lvae.codec.CompressionMixin`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coding.codec import CompressionMixin
from ..coding.determinism import coding_arithmetic
from ..coding.gaussian import DiscreteGaussian, gaussian_bin_nll
from ..coding.latent import CodedLatent, decode_latent, encode_latent
from ..errors import PrecisionUnavailableError
from .base import ConfigDict, ImageVAEBase
from .layers import (
    ConvNeXtBlockAdaLN,
    DecoderStopMark,
    FeatureMark,
    LambdaEmbedding,
    bf16_mlps,
    bf16_mlps_supported,
    patch_downsample,
    patch_upsample,
)

__all__ = ["QARVConfig", "LatentVariableBlock", "QARV", "MAX_STRIDE", "ENCODER_PRECISIONS"]

LOG2_E = math.log2(math.e)
ENCODER_PRECISIONS = ("float32", "bfloat16")
MAX_STRIDE = 64  # the total down-sampling of the encoder: image sides must be multiples of it


def _bf16_unavailable(device: torch.device) -> str:
    where = "a GPU" if device.type != "cpu" else "this CPU (oneDNN computes no bfloat16 linears on it)"
    return f"the bfloat16 encoder does not run on {where}"


@dataclass(frozen=True)
class QARVConfig(ConfigDict):
    """Widths, depths and kernels of a QARV network (defaults: the published ``qarv_base``).

    Encoder stages run at 1/4, 1/8, ..., 1/64 of the input resolution. Decoder stages run
    top-down from 1/64; every stage but the last (1/4) holds ``dec_num_latents[i]`` latent blocks.
    """

    label = "QARV"

    enc_widths: tuple[int, ...] = (192, 384, 512, 512, 512)
    enc_depths: tuple[int, ...] = (6, 6, 6, 4, 4)
    enc_kernels: tuple[int, ...] = (7, 7, 5, 3, 1)
    dec_widths: tuple[int, ...] = (512, 512, 384, 256, 128)
    dec_kernels: tuple[int, ...] = (1, 3, 5, 7, 7)
    dec_mlp_ratios: tuple[float, ...] = (4.0, 3.0, 2.0, 1.75, 1.5)
    dec_num_latents: tuple[int, ...] = (1, 2, 3, 3)
    dec_latent_dims: tuple[int, ...] = (32, 32, 96, 8)
    dec_final_depth: int = 8
    embed_dim: int = 256
    transition_kernel: int = 7  # the CNB between encoder stages uses the default kernel
    lmb_range: tuple[float, float] = (16.0, 2048.0)
    max_lmb_embed: float = 8192.0  # ln(λ) is scaled so that this λ maps to the longest period
    im_shift: float = -0.4546259594901961
    im_scale: float = 3.67572653978347

    def __post_init__(self):
        n = len(self.enc_widths)
        if not (len(self.enc_depths) == len(self.enc_kernels) == n == 5):
            raise ValueError("QARV has five encoder stages (1/4 ... 1/64): enc_* need 5 entries")
        if not (len(self.dec_widths) == len(self.dec_kernels) == len(self.dec_mlp_ratios) == 5):
            raise ValueError("QARV has five decoder stages (1/64 ... 1/4): dec_* need 5 entries")
        if not (len(self.dec_num_latents) == len(self.dec_latent_dims) == 4):
            raise ValueError("dec_num_latents and dec_latent_dims need 4 entries (1/64 ... 1/8)")
        lo, hi = self.lmb_range
        if not (0 < lo < hi):
            raise ValueError(f"lmb_range must satisfy 0 < low < high, got {self.lmb_range}")


class LatentVariableBlock(nn.Module):
    """One latent variable of the hierarchy: prior, posterior and entropy model."""

    def __init__(
        self,
        width: int,
        zdim: int,
        enc_key: str,
        enc_width: int,
        embed_dim: int,
        kernel_size: int,
        mlp_ratio: float,
    ):
        super().__init__()
        self.enc_key = enc_key
        self.zdim = zdim

        def cnb(d: int, r: float = 2.0) -> ConvNeXtBlockAdaLN:
            return ConvNeXtBlockAdaLN(d, embed_dim, kernel_size, r)

        self.resnet_front = cnb(width, mlp_ratio)
        self.resnet_end = cnb(width, mlp_ratio)
        self.posterior0 = cnb(enc_width)
        self.posterior1 = cnb(width)
        self.posterior2 = cnb(width)
        self.post_merge = nn.Conv2d(width + enc_width, width, kernel_size=1)
        self.posterior = nn.Conv2d(width, zdim, kernel_size=3, padding=1)
        self.z_proj = nn.Conv2d(zdim, width, kernel_size=1)
        self.prior = nn.Conv2d(width, 2 * zdim, kernel_size=1)
        self.discrete_gaussian = DiscreteGaussian()

    # -- the three paths of the block --------------------------------------------------------
    def prior_params(self, f: torch.Tensor, emb: torch.Tensor):
        """Run ``resnet_front``; return the new feature, prior mean and prior scale (> 0.1)."""
        f = self.resnet_front(f, emb)
        pm, t = self.prior(f).contiguous().chunk(2, dim=1)  # NCHW: the coder reads these
        pv = torch.exp(F.softplus(t + 2.3) - 2.3)
        return f, pm.contiguous(), pv

    def posterior_mean(self, f: torch.Tensor, enc: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.posterior1(f, emb), self.posterior0(enc, emb)], dim=1)
        return self.posterior(self.posterior2(self.post_merge(merged), emb)).contiguous()

    def merge(self, f: torch.Tensor, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.resnet_end(f + self.z_proj(z), emb)

    # -- jobs ---------------------------------------------------------------------------------
    def forward(self, f: torch.Tensor, enc: torch.Tensor, emb: torch.Tensor):
        """Return the updated feature and the rate of each image in nats (shape N).

        Training: additive uniform noise and the bin likelihood of :func:`gaussian_bin_nll`.
        Evaluation: rounding around the prior mean and CompressAI's discrete likelihood.
        """
        f, pm, pv = self.prior_params(f, emb)
        qm = self.posterior_mean(f, enc, emb)
        if self.training:
            z = qm + torch.empty_like(qm).uniform_(-0.5, 0.5)
            nll = gaussian_bin_nll(z, pm, pv)
        else:
            z, likelihood = self.discrete_gaussian(qm, scales=pv, means=pm)
            nll = -torch.log(likelihood)
        return self.merge(f, z, emb), nll.flatten(1).sum(dim=1)

    def sample(self, f: torch.Tensor, emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        f, pm, pv = self.prior_params(f, emb)
        noise = torch.randn_like(pm) * pv + torch.empty_like(pm).uniform_(-0.5, 0.5)
        return self.merge(f, pm + noise * temperature, emb)

    def predict(self, f: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The latent's value left to the prior: its mean (progressive decoding of a prefix)."""
        f, pm, _ = self.prior_params(f, emb)
        return self.merge(f, pm, emb)

    def encode(self, f: torch.Tensor, enc: torch.Tensor, emb: torch.Tensor, merge: bool = True, bf16: bool = False):
        """Entropy-code the quantized posterior; return the feature and one coded latent per image.

        ``merge=False`` skips ``resnet_end`` (the returned feature is then the prior's) for the
        last block, whose merged feature encoding does not need. ``bf16``: the posterior's MLPs in
        bfloat16 (:func:`~lvae.models.layers.bf16_mlps`); the prior stays float32.
        """
        f, pm, pv = self.prior_params(f, emb)
        with bf16_mlps(bf16):
            qm = self.posterior_mean(f, enc, emb)
        z, coded = encode_latent(qm, pm, pv)
        return (self.merge(f, z, emb) if merge else f), coded

    def decode(self, f: torch.Tensor, coded: Sequence[CodedLatent], emb: torch.Tensor) -> torch.Tensor:
        f, pm, pv = self.prior_params(f, emb)
        return self.merge(f, decode_latent(coded, pm, pv), emb)


class QARV(ImageVAEBase, CompressionMixin, nn.Module):
    """Variable-rate lossy VAE. Build it with :func:`lvae.get_model` or from a :class:`QARVConfig`."""

    max_stride = MAX_STRIDE

    def __init__(self, config: QARVConfig | None = None):
        super().__init__()
        cfg = config if config is not None else QARVConfig()
        self.config = cfg
        self.name: str | None = None  # set by the registry; recorded in bitstreams
        # "bfloat16": the encoder-only computations (bottom-up features, posteriors) in bfloat16;
        # files still decode everywhere (docs/speed.md). Set it with set_encoder_precision().
        self.encoder_precision = "float32"
        self.lmb_range = (float(cfg.lmb_range[0]), float(cfg.lmb_range[1]))
        self.default_lmb = math.sqrt(self.lmb_range[0] * self.lmb_range[1])
        self.im_shift = cfg.im_shift
        self.im_scale = cfg.im_scale
        e = cfg.embed_dim

        self.bias = nn.Parameter(torch.zeros(1, cfg.dec_widths[0], 1, 1))
        self.encoder = nn.Module()
        self.encoder.enc_blocks = nn.ModuleList(self._encoder_layers(cfg))
        self.dec_blocks = nn.ModuleList(self._decoder_layers(cfg))
        self.lmb_embedding = LambdaEmbedding(e, max_lmb=cfg.max_lmb_embed)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _encoder_layers(cfg: QARVConfig) -> list[nn.Module]:
        e = cfg.embed_dim
        layers: list[nn.Module] = []
        widths = cfg.enc_widths
        for i, (w, depth, k) in enumerate(zip(widths, cfg.enc_depths, cfg.enc_kernels)):
            if i == 0:
                layers.append(patch_downsample(3, w, rate=4))
            else:
                layers.append(patch_downsample(widths[i - 1], w, rate=2))
            layers.extend(ConvNeXtBlockAdaLN(w, e, k) for _ in range(depth))
            if i > 0:  # stages 1/8 ... 1/64 feed latent blocks
                layers.append(FeatureMark(f"enc_s{4 * 2 ** i}"))
            if i < len(widths) - 1:
                layers.append(ConvNeXtBlockAdaLN(w, e, cfg.transition_kernel))
        return layers

    @staticmethod
    def _decoder_layers(cfg: QARVConfig) -> list[nn.Module]:
        e = cfg.embed_dim
        layers: list[nn.Module] = []
        widths, kernels, ratios = cfg.dec_widths, cfg.dec_kernels, cfg.dec_mlp_ratios
        enc_widths = cfg.enc_widths[::-1]  # 1/64 first
        n_latent_stages = len(cfg.dec_num_latents)
        for i in range(n_latent_stages):
            w, k, r = widths[i], kernels[i], ratios[i]
            stride = MAX_STRIDE // 2 ** i
            cnb = functools.partial(ConvNeXtBlockAdaLN, w, e, k, r)
            if i > 0:
                layers.append(cnb())
            for _ in range(cfg.dec_num_latents[i]):
                layers.append(
                    LatentVariableBlock(w, cfg.dec_latent_dims[i], f"enc_s{stride}", enc_widths[i], e, k, r)
                )
            if i == n_latent_stages - 1:
                layers.append(DecoderStopMark())
            layers.append(cnb())
            layers.append(patch_upsample(w, widths[i + 1], rate=2))
        w, k, r = widths[-1], kernels[-1], ratios[-1]
        layers.extend(ConvNeXtBlockAdaLN(w, e, k, r) for _ in range(cfg.dec_final_depth))
        layers.append(patch_upsample(w, 3, rate=4))
        return layers

    @property
    def latent_blocks(self) -> list[LatentVariableBlock]:
        return [b for b in self.dec_blocks if isinstance(b, LatentVariableBlock)]

    # -- λ ------------------------------------------------------------------------------------
    def sample_lmb(self, n: int) -> torch.Tensor:
        """Draw ``n`` λ values uniformly in cube-root space over ``lmb_range`` (training)."""
        lo, hi = (v ** (1.0 / 3.0) for v in self.lmb_range)
        u = torch.rand(n, device=self.bias.device)
        return (lo + (hi - lo) * u) ** 3

    def lmb_tensor(self, lmb: float | Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
        """Check λ against ``lmb_range`` and return it as a float tensor of shape ``n``."""
        if lmb is None:
            return self.sample_lmb(n)
        t = torch.as_tensor(lmb, dtype=torch.float32).detach().reshape(-1).to(self.bias.device)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"got {t.numel()} λ values for a batch of {n} images")
        lo, hi = self.lmb_range
        # NOTE: float32 rounding of the range ends must not refuse the ends themselves.
        bad = ~((t >= lo * (1 - 1e-6)) & (t <= hi * (1 + 1e-6)))
        if bool(bad.any()):
            raise ValueError(
                f"λ={t[bad][0].item():g} is outside this model's range [{lo:g}, {hi:g}]"
            )
        return t.contiguous()

    # -- networks ----------------------------------------------------------------------------
    def encode_features(self, x: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        x = x.contiguous(memory_format=torch.channels_last)  # the network runs channels-last
        for block in cast(nn.ModuleList, self.encoder.enc_blocks):
            if isinstance(block, FeatureMark):
                feats[block.key] = x
            elif isinstance(block, ConvNeXtBlockAdaLN):
                x = block(x, emb)
            else:
                x = block(x)
        return feats

    def top_feature(self, n: int, h: int, w: int) -> torch.Tensor:
        """The decoder's input: the learned ``bias`` repeated over an ``h``×``w`` latent grid."""
        return self.bias.expand(n, -1, h, w).contiguous(memory_format=torch.channels_last)

    def _run_decoder(self, f: torch.Tensor, emb: torch.Tensor, latent_fn, stop_at_mark: bool = False):
        for block in self.dec_blocks:
            if isinstance(block, LatentVariableBlock):
                f = latent_fn(block, f)
            elif isinstance(block, DecoderStopMark):
                if stop_at_mark:
                    return f
            elif isinstance(block, ConvNeXtBlockAdaLN):
                f = block(f, emb)
            else:
                f = block(f)
        return f.contiguous()

    # -- training / evaluation ---------------------------------------------------------------
    def forward(self, im: torch.Tensor, lmb: float | Sequence[float] | torch.Tensor | None = None) -> dict:
        """Rate–distortion statistics of a batch ``im`` (N×3×H×W in [0, 1], sides multiples of 64).

        ``lmb``: a scalar or one value per image; drawn per image (cube-root uniform) when None.
        In training mode latents get uniform noise; in eval mode they are rounded, so ``bpp`` is
        the model's estimate of the coded size. Returns ``loss``, ``bpp``, ``mse`` (target space,
        [-1, 1]), ``psnr`` (RGB [0, 1], clamped output), ``kl`` (N×L nats), ``x_hat``, ``lmb``
        and ``rd`` (N: each image's ``R + λ·D``, nats per dimension; ``loss`` is its mean).
        """
        self._check_image(im)
        n, _, h, w = im.shape
        lmb_t = self.lmb_tensor(lmb, n)
        emb = self.lmb_embedding(lmb_t)
        feats = self.encode_features(self.preprocess(im), emb)
        kls: list[torch.Tensor] = []

        def latent(block: LatentVariableBlock, f: torch.Tensor) -> torch.Tensor:
            f, kl = block(f, feats[block.enc_key], emb)
            kls.append(kl)
            return f

        f = self.top_feature(n, h // self.max_stride, w // self.max_stride)
        x_hat = self._run_decoder(f, emb, latent)

        return self.rd_statistics(im, x_hat, torch.stack(kls, dim=1), lmb_t)

    @torch.no_grad()
    def reconstruct(self, im: torch.Tensor, lmb: float | None = None) -> torch.Tensor:
        """Evaluation-mode reconstruction in [0, 1] (what decoding the bitstream gives)."""
        was_training = self.training
        self.eval()
        try:
            with coding_arithmetic(im.device):  # the same arithmetic as decoding a file
                out = self.forward(im, self.default_lmb if lmb is None else lmb)
        finally:
            self.train(was_training)
        return self.postprocess(out["x_hat"])

    @torch.no_grad()
    def sample(
        self,
        n: int = 1,
        lmb: float | None = None,
        temperature: float = 1.0,
        latent_hw: tuple[int, int] = (4, 4),
    ) -> torch.Tensor:
        """Draw ``n`` images from the prior; the output is ``64·latent_hw`` pixels, in [0, 1]."""
        lmb_t = self.lmb_tensor(self.default_lmb if lmb is None else lmb, n)
        emb = self.lmb_embedding(lmb_t)
        f = self.top_feature(n, *latent_hw)
        x_hat = self._run_decoder(f, emb, lambda b, f: b.sample(f, emb, temperature))
        return self.postprocess(x_hat)

    # -- entropy coding ------------------------------------------------------------------------
    def set_encoder_precision(self, precision: str) -> QARV:
        """``"float32"`` (default) or ``"bfloat16"``: the arithmetic of what only the encoder
        computes — the bottom-up features and the posteriors, which choose the coded symbols.

        The prior, which encoder and decoder must compute alike, stays float32 either way, so a
        file made with ``"bfloat16"`` decodes exactly as any other on every machine. On CPUs with
        bfloat16 matrix units (AMX) encoding is about 1.6× faster; the files differ from the
        float32 encoder's by a few bytes and ±0.01 dB (docs/speed.md has the measurements).

        Where bfloat16 does not run (:meth:`encoder_precisions`: a CPU without AVX-512 BF16 or AMX,
        a GPU) it raises :class:`lvae.PrecisionUnavailableError` and the encoder stays float32.
        """
        if precision not in ENCODER_PRECISIONS:
            raise ValueError(f"encoder precision must be one of {', '.join(ENCODER_PRECISIONS)}, got {precision!r}")
        if precision not in self.encoder_precisions():
            raise PrecisionUnavailableError(_bf16_unavailable(self._device()) + "; the encoder stays float32")
        self.encoder_precision = precision
        return self

    def encoder_precisions(self) -> tuple[str, ...]:
        """``("float32", "bfloat16")`` where the bfloat16 encoder runs (CPU inference with oneDNN's
        bfloat16 linears: AVX-512 BF16 or AMX), else ``("float32",)``."""
        if bf16_mlps_supported(self._device()):
            return ENCODER_PRECISIONS
        return ("float32",)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def compress_mode(self, enabled: bool = True) -> QARV:
        """Fill (``True``) the entropy-coder buffers of the state dict with the canonical CDF tables.

        Coding does not need it (the tables are package constants); it exists for checkpoints
        that should carry the tables, as the authors' code expects.
        """
        if enabled:
            for block in self.latent_blocks:
                block.discrete_gaussian.fill_tables()
        return self

    @torch.no_grad()
    def encode_latents(self, im: torch.Tensor, lmb: float | Sequence[float] | torch.Tensor):
        """Entropy-code a batch whose sides are multiples of 64.

        Returns one list per latent block (decoder order) of one :class:`CodedLatent` per image
        (string and index-map check), and the latent grid size ``(H/64, W/64)``.
        """
        self._check_image(im)
        n, _, h, w = im.shape
        lmb_t = self.lmb_tensor(lmb, n)
        coded: list[list[CodedLatent]] = []
        grid = (h // self.max_stride, w // self.max_stride)
        last = self.latent_blocks[-1]  # encoding stops at the DecoderStopMark right after it
        bf16 = self.encoder_precision == "bfloat16"
        if bf16 and not bf16_mlps_supported(im.device):  # e.g. moved to a GPU after it was set
            raise PrecisionUnavailableError(
                _bf16_unavailable(im.device) + "; set_encoder_precision('float32') to encode here"
            )
        with coding_arithmetic(im.device):
            emb = self.lmb_embedding(lmb_t)
            with bf16_mlps(bf16):
                feats = self.encode_features(self.preprocess(im), emb)

            def latent(block: LatentVariableBlock, f: torch.Tensor) -> torch.Tensor:
                f, c = block.encode(f, feats[block.enc_key], emb, merge=block is not last, bf16=bf16)
                coded.append(c)
                return f

            self._run_decoder(self.top_feature(n, *grid), emb, latent, stop_at_mark=True)
        return coded, grid

    @torch.no_grad()
    def decompress_latents(
        self,
        strings: Sequence[Sequence[bytes | CodedLatent]],
        lmb: float | Sequence[float] | torch.Tensor,
        latent_hw: tuple[int, int],
        batch: int = 1,
    ) -> torch.Tensor:
        """Decode the output of :meth:`encode_latents` or :meth:`compress_latents`; returns x̂.

        Strings given as plain ``bytes`` carry no index-map check: each is verified by its
        rANS end state instead (see :mod:`lvae.coding.portable`). Fewer strings than latent
        blocks (a prefix, in decoder order) decode progressively: the deeper latents take their
        prior mean. ``batch`` is the number of images when no string is given.
        """
        blocks = self.latent_blocks
        if len(strings) > len(blocks):
            raise ValueError(f"expected at most {len(blocks)} latent strings, got {len(strings)}")
        n = len(strings[0]) if strings else batch
        coded = [[s if isinstance(s, CodedLatent) else CodedLatent(bytes(s)) for s in block] for block in strings]
        lmb_t = self.lmb_tensor(lmb, n)
        queue = iter(coded)

        def latent(block: LatentVariableBlock, f: torch.Tensor) -> torch.Tensor:
            given = next(queue, None)
            return block.predict(f, emb) if given is None else block.decode(f, given, emb)

        f = self.top_feature(n, *latent_hw)
        with coding_arithmetic(f.device):
            emb = self.lmb_embedding(lmb_t)
            return self._run_decoder(f, emb, latent)
