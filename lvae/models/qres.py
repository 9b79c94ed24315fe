"""QRes-VAE: the fixed-rate hierarchical VAE of Duan et al. (WACV 2023), one network per λ.

The published family (``qres34m``, ``qres17m``) trains one network per rate–distortion
trade-off λ; λ only weighs the training loss, so the networks of one family share their
architecture (:class:`QResConfig`) and a member is the architecture plus the weights trained at
its λ. The network: a bottom-up ConvNeXt encoder whose feature at each resolution feeds the
latent blocks of a top-down decoder (:class:`QLatentBlock`: prior, posterior, and the latent's
projection back into the feature), ending in a sub-pixel convolution to the image.

Coding goes through :class:`lvae.codec.CompressionMixin` like every model; the latents use
QRes-VAE's own CDF tables (:data:`lvae.coding.gaussian.QRES_TABLES`). The authors' files are
Python pickles; lvae reads them without unpickling (:mod:`lvae.coding.pickled`) and writes them
with ``format='legacy'``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coding.codec import CompressionMixin
from ..coding.determinism import coding_arithmetic
from ..coding.gaussian import PIXEL_TABLES, QRES_TABLES, DiscreteGaussian, gaussian_bin_nll
from ..coding.latent import CodedLatent, decode_latent, encode_latent
from ..coding.lossless import decode_integers, encode_integers
from ..coding.pickled import pack_qres_legacy
from .base import ConfigDict, ImageVAEBase
from .layers import ConvNeXtBlock, patch_downsample, patch_upsample

__all__ = ["QResConfig", "QLatentBlock", "QResVAE"]

LOG2_E = math.log2(math.e)


@dataclass(frozen=True)
class QResConfig(ConfigDict):
    """Widths, depths and kernels of a QRes-VAE network (defaults: the published ``qres34m``).

    Encoder: a 4×4 patch embedding to ``enc_widths[0]``, then per stage ``enc_depths[i]`` ConvNeXt
    blocks of kernel ``enc_kernels[i]``, the last stage's blocks but the last followed by a
    down-sampling block (a ConvNeXt block, then a ``enc_down[i]``-fold patch merge to the next
    width). Decoder, top-down: per stage ``dec_latents[i]`` latent blocks of width
    ``dec_widths[i]``, latent channels ``dec_zdims[i]`` and kernel ``dec_kernels[i]``, then an
    up-sampling layer ``dec_up[i]`` to the next stage: ``("patch", r)`` (sub-pixel, r×),
    ``("nearest", r)`` (nearest neighbour, no parameters) or ``("deconv", k)`` (a transposed
    convolution of kernel k, stride 2). The last stage ends in a 4× sub-pixel layer to RGB.
    """

    label = "QRes-VAE"

    enc_widths: tuple[int, ...] = (192, 384, 384, 384, 384)
    enc_depths: tuple[int, ...] = (6, 6, 6, 4, 2)
    enc_kernels: tuple[int, ...] = (7, 7, 5, 3, 1)
    enc_down: tuple[int, ...] = (2, 2, 2, 2)
    dec_widths: tuple[int, ...] = (384, 384, 384, 384, 192)
    dec_latents: tuple[int, ...] = (1, 2, 3, 3, 3)
    dec_zdims: tuple[int, ...] = (16, 14, 12, 10, 8)
    dec_kernels: tuple[int, ...] = (1, 3, 5, 7, 7)
    dec_up: tuple[tuple[str, int], ...] = (("patch", 2), ("patch", 2), ("patch", 2), ("patch", 2))
    im_shift: float = -0.4546259594901961  # ImageNet's mean and 1/std (qres17m: CelebA's)
    im_scale: float = 3.67572653978347
    lossless: bool = False  # the last stage ends in PixelOutput (a discretized Gaussian per pixel)

    def __post_init__(self):
        n = len(self.enc_widths)
        if not (len(self.enc_depths) == len(self.enc_kernels) == n and len(self.enc_down) == n - 1):
            raise ValueError("enc_widths, enc_depths and enc_kernels need one entry per stage, enc_down one fewer")
        m = len(self.dec_widths)
        if not (len(self.dec_latents) == len(self.dec_zdims) == len(self.dec_kernels) == m
                and len(self.dec_up) == m - 1):
            raise ValueError("dec_widths, dec_latents, dec_zdims and dec_kernels need one entry per stage, "
                             "dec_up one fewer")
        for kind, _ in self.dec_up:
            if kind not in ("patch", "nearest", "deconv"):
                raise ValueError(f"unknown up-sampling {kind!r}: patch, nearest or deconv")
        if self.enc_widths[-1] != self.dec_widths[0]:
            raise ValueError("the decoder's first width must equal the encoder's last (the top feature's shape)")

    @property
    def max_stride(self) -> int:
        """The encoder's total down-sampling: image sides must be multiples of it."""
        return 4 * math.prod(self.enc_down)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)


class ResBottleneck(nn.Module):
    """GELU → conv ×4 (1×1, k×k, k×k, 1×1; k = 3, or 1 in 1×1 stages), no residual: the
    prior's and the posterior's networks (the VDVAE block)."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int):
        super().__init__()
        self.c1 = _conv(cin, hidden, 1)
        self.c2 = _conv(hidden, hidden, k)
        self.c3 = _conv(hidden, hidden, k)
        self.c4 = _conv(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.c1, self.c2, self.c3, self.c4):
            x = conv(F.gelu(x))
        return x


class ConvNeXtDown(ConvNeXtBlock):
    """A ConvNeXt block followed by a ``rate``-fold patch merge to ``out_ch`` channels."""

    def __init__(self, in_ch: int, out_ch: int, rate: int, kernel_size: int = 7):
        super().__init__(in_ch, kernel_size)
        self.downsapmle = patch_downsample(in_ch, out_ch, rate)  # NOTE: the published spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsapmle(super().forward(x))


class QLatentBlock(nn.Module):
    """One latent variable: ``resnet_front`` → prior N(μ, σ) → (posterior mean, coded) →
    ``feature + z_proj(z)`` → ``resnet_end``."""

    def __init__(self, width: int, zdim: int, kernel_size: int):
        super().__init__()
        hidden = int(width * 0.25)
        k = 3 if kernel_size >= 3 else 1
        self.zdim = zdim
        self.resnet_front = ConvNeXtBlock(width, kernel_size)
        self.resnet_end = ConvNeXtBlock(width, kernel_size)
        self.posterior = ResBottleneck(2 * width, hidden, zdim, k)
        self.prior = ResBottleneck(width, hidden, 2 * zdim, k)
        nn.init.zeros_(self.prior.c4.weight)  # the prior starts as N(0, 1) (training from scratch)
        self.z_proj = nn.Sequential(_conv(zdim, hidden // 2, k), nn.GELU(), _conv(hidden // 2, width, 1))
        self.discrete_gaussian = DiscreteGaussian(QRES_TABLES)

    def prior_params(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.resnet_front(f)
        pm, t = self.prior(f).chunk(2, dim=1)
        pv = torch.exp(F.softplus(t + 2.3) - 2.3)  # σ > 0.1
        return f, pm.contiguous(), pv.contiguous()

    def posterior_mean(self, f: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self.posterior(torch.cat([f, enc], dim=1)).contiguous()

    def merge(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.resnet_end(f + self.z_proj(z))

    def forward(self, f: torch.Tensor, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The updated feature and the rate of each image in nats (shape N): uniform noise and the
        bin likelihood in training, rounding around the prior mean in evaluation."""
        f, pm, pv = self.prior_params(f)
        qm = self.posterior_mean(f, enc)
        if self.training:
            z = qm + torch.empty_like(qm).uniform_(-0.5, 0.5)
            nll = gaussian_bin_nll(z, pm, pv)
        else:
            z, likelihood = self.discrete_gaussian(qm, scales=pv, means=pm)
            nll = -torch.log(likelihood)
        return self.merge(f, z), nll.flatten(1).sum(dim=1)

    def sample(self, f: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        f, pm, pv = self.prior_params(f)
        noise = torch.randn_like(pm) * pv + torch.empty_like(pm).uniform_(-0.5, 0.5)
        return self.merge(f, pm + noise * temperature)

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        """The latent left to its prior mean (progressive decoding of a prefix)."""
        f, pm, _ = self.prior_params(f)
        return self.merge(f, pm)

    def encode(self, f: torch.Tensor, enc: torch.Tensor) -> tuple[torch.Tensor, list[CodedLatent]]:
        f, pm, pv = self.prior_params(f)
        z, coded = encode_latent(self.posterior_mean(f, enc), pm, pv, QRES_TABLES)
        return self.merge(f, z), coded

    def decode(self, f: torch.Tensor, coded: Sequence[CodedLatent]) -> torch.Tensor:
        f, pm, pv = self.prior_params(f)
        return self.merge(f, decode_latent(coded, pm, pv, QRES_TABLES))


class PixelOutput(nn.Module):
    """The lossless model's output: per pixel a Gaussian over the 8-bit intensities, its mean and
    log-scale each from a 4× sub-pixel layer; the pixels are coded exactly under it (the 13th string)."""

    STEP = 127.5  # intensity steps per unit of the target space [-1, 1]

    def __init__(self, width: int):
        super().__init__()
        self.conv_mean = patch_upsample(width, 3, rate=4)
        self.conv_scale = patch_upsample(width, 3, rate=4)

    def nll(self, f: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nats of each image's pixels (N) under the predicted Gaussians (one bin per intensity step), and
        the mean (target space): training and evaluation."""
        mean = self.conv_mean(f).float()
        log_scale = F.softplus(self.conv_scale(f).float() + 16) - 16  # σ bounded below, as trained
        nll = gaussian_bin_nll(target * self.STEP, mean * self.STEP, torch.exp(log_scale) * self.STEP)
        return nll.flatten(1).sum(dim=1), mean

    def coding_params(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The centres (in intensity steps, 0–255: ``round`` gives each pixel's mean) and the scales
        (intensity steps) the pixels are coded with, computed as the authors' code computes them."""
        centres = self.conv_mean(f) * self.STEP + self.STEP
        scales = torch.exp(self.conv_scale(f) - math.log(1 / self.STEP))
        return centres.contiguous(), scales.contiguous()


def _upsampler(kind: str, value: int, cin: int, cout: int) -> nn.Module:
    if kind == "patch":
        return patch_upsample(cin, cout, rate=value)
    if kind == "nearest":
        if cin != cout:
            raise ValueError("nearest-neighbour up-sampling keeps the width")
        return nn.Upsample(scale_factor=value)
    return nn.ConvTranspose2d(cin, cout, value, stride=2, padding=value // 2, output_padding=1)


class _Encoder(nn.Module):
    """Holds ``enc_blocks`` (the published state-dict names)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.enc_blocks = nn.ModuleList(blocks)


class _Decoder(nn.Module):
    """Holds ``bias`` (the top feature, learned) and ``dec_blocks`` (the published state-dict names)."""

    def __init__(self, width: int, blocks: list[nn.Module]):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.dec_blocks = nn.ModuleList(blocks)


class QResVAE(ImageVAEBase, CompressionMixin, nn.Module):
    """One member of a QRes-VAE family: the network of :class:`QResConfig` trained at ``lmb``.

    Build it with :func:`lvae.get_model` (``get_model('qres34m', lmb=64, pretrained=True)``).
    ``lmb_range`` is ``(lmb, lmb)``: the network codes at its own λ only; a family's other members
    are other networks (:meth:`member`).
    """

    #: ``format='legacy'`` writes the authors' pickled layout, which their code reads for these models.
    legacy_layout_models = ("qres34m", "qres17m", "qres34m_lossless")
    legacy_layout = "pickle"

    def __init__(self, config: QResConfig | None = None, lmb: float = 64.0):
        super().__init__()
        cfg = config if config is not None else QResConfig()
        lmb = float(lmb)
        if not (math.isfinite(lmb) and lmb > 0):
            raise ValueError(f"λ must be a positive number, got {lmb}")
        self.config = cfg
        self.name: str | None = None  # set by the registry; recorded in bitstreams
        self.lmb = lmb
        self.lmb_range = (lmb, lmb)
        self.default_lmb = lmb
        self.max_stride = cfg.max_stride
        self.im_shift, self.im_scale = cfg.im_shift, cfg.im_scale

        enc: list[nn.Module] = [patch_downsample(3, cfg.enc_widths[0], rate=4)]
        for i, (w, depth, k) in enumerate(zip(cfg.enc_widths, cfg.enc_depths, cfg.enc_kernels)):
            enc.extend(ConvNeXtBlock(w, k) for _ in range(depth))
            if i < len(cfg.enc_down):
                enc.append(ConvNeXtDown(w, cfg.enc_widths[i + 1], cfg.enc_down[i]))
        self.encoder = _Encoder(enc)

        dec: list[nn.Module] = []
        for i, (w, n, zdim, k) in enumerate(zip(cfg.dec_widths, cfg.dec_latents, cfg.dec_zdims, cfg.dec_kernels)):
            dec.extend(QLatentBlock(w, zdim, k) for _ in range(n))
            if i < len(cfg.dec_up):
                dec.append(_upsampler(*cfg.dec_up[i], w, cfg.dec_widths[i + 1]))
        if not cfg.lossless:
            dec.append(patch_upsample(cfg.dec_widths[-1], 3, rate=4))
        self.decoder = _Decoder(cfg.dec_widths[0], dec)
        self.lossless = cfg.lossless
        if cfg.lossless:
            self.out_net = PixelOutput(cfg.dec_widths[-1])
        self._scale_residuals()

    def _scale_residuals(self) -> None:
        """The authors' initialisation for training from scratch: each latent block's last
        projection scaled by ``sqrt(1 / 3 * N)`` as their code writes it, i.e. ``sqrt(N / 3)``."""
        n = len(self._latents)
        with torch.no_grad():
            for block in self._latents:
                last = block.z_proj[2]
                assert isinstance(last, nn.Conv2d)
                last.weight.mul_(math.sqrt(1 / 3 * n))

    def _pack_legacy(self, lmb: float, height: int, width: int, strings: list[bytes]) -> bytes:
        """The authors' pickled layout: the strings, the top feature's shape, the image size."""
        top = (1, self.config.dec_widths[0], -(-height // self.max_stride), -(-width // self.max_stride))
        if self.lossless:  # the pixels' string goes between the shape and the size
            return pack_qres_legacy(strings[:-1], top, height, width, strings[-1], stride=self.max_stride)
        return pack_qres_legacy(strings, top, height, width, stride=self.max_stride)

    @property
    def _latents(self) -> list[QLatentBlock]:
        return [b for b in self.decoder.dec_blocks if isinstance(b, QLatentBlock)]

    @property
    def latent_blocks(self) -> list[nn.Module]:
        """The coded blocks in file order: the latents, and for the lossless model the pixels last."""
        return [*self._latents, *([self.out_net] if self.lossless else [])]

    # -- λ ------------------------------------------------------------------------------------
    def sample_lmb(self, n: int) -> torch.Tensor:
        """Training draws no λ: a member trains at its own."""
        return torch.full((n,), self.lmb, device=self.decoder.bias.device)

    def lmb_tensor(self, lmb: float | Sequence[float] | torch.Tensor | None, n: int) -> torch.Tensor:
        """λ as a float tensor of shape ``n``; only this member's λ is accepted."""
        if lmb is None:
            return self.sample_lmb(n)
        t = torch.as_tensor(lmb, dtype=torch.float32).detach().reshape(-1).to(self.decoder.bias.device)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"got {t.numel()} λ values for a batch of {n} images")
        bad = (t - self.lmb).abs() > 1e-6 * self.lmb
        if bool(bad.any()):
            raise ValueError(
                f"this network is the λ={self.lmb:g} member of {self.name or 'its family'}; λ={t[bad][0].item():g} "
                "is another network (model.member(λ), or get_model(name, lmb=λ, pretrained=True))"
            )
        return t.contiguous()

    # -- networks ----------------------------------------------------------------------------
    def encode_features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The encoder's last feature at each height (the latent blocks of that height read it)."""
        feats: dict[int, torch.Tensor] = {}
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.encoder.enc_blocks:
            x = block(x)
            feats[int(x.shape[2])] = x
        return feats

    def top_feature(self, n: int, h: int, w: int) -> torch.Tensor:
        return self.decoder.bias.expand(n, -1, h, w).contiguous(memory_format=torch.channels_last)

    def _run_decoder(self, f: torch.Tensor, latent_fn: Callable[[QLatentBlock, torch.Tensor], torch.Tensor],
                     until_last_latent: bool = False) -> torch.Tensor:
        blocks = list(self.decoder.dec_blocks)
        last = max(i for i, b in enumerate(blocks) if isinstance(b, QLatentBlock))
        for i, block in enumerate(blocks):
            f = latent_fn(block, f) if isinstance(block, QLatentBlock) else block(f)
            if until_last_latent and i == last:
                break
        return f.contiguous()

    # -- training / evaluation ---------------------------------------------------------------
    def forward(self, im: torch.Tensor, lmb: float | Sequence[float] | torch.Tensor | None = None) -> dict:
        """Rate–distortion statistics of a batch ``im`` (N×3×H×W in [0, 1], sides multiples of
        :attr:`max_stride`) at this member's λ; the same keys as QARV's ``forward``: ``loss``, ``bpp``,
        ``mse`` (target space), ``psnr``, ``kl`` (N×L nats), ``x_hat``, ``lmb`` and ``rd``."""
        self._check_image(im)
        n, _, h, w = im.shape
        lmb_t = self.lmb_tensor(lmb, n)
        feats = self.encode_features(self.preprocess(im))
        kls: list[torch.Tensor] = []

        def latent(block: QLatentBlock, f: torch.Tensor) -> torch.Tensor:
            f, kl = block(f, feats[int(f.shape[2])])
            kls.append(kl)
            return f

        x_hat = self._run_decoder(self.top_feature(n, h // self.max_stride, w // self.max_stride), latent)
        target = (im - 0.5) * 2
        if self.lossless:  # the pixels' own nats are the last column; x_hat is their predicted mean
            nll, x_hat = self.out_net.nll(x_hat, target)
            kls.append(nll)
        return self.rd_statistics(im, x_hat, torch.stack(kls, dim=1), lmb_t, rate_only=self.lossless)

    @torch.no_grad()
    def reconstruct(self, im: torch.Tensor, lmb: float | None = None) -> torch.Tensor:
        """Evaluation-mode reconstruction in [0, 1] (what decoding the bitstream gives)."""
        was_training = self.training
        self.eval()
        try:
            with coding_arithmetic(im.device):
                out = self.forward(im, lmb)
        finally:
            self.train(was_training)
        return self.postprocess(out["x_hat"])

    @torch.no_grad()
    def sample(self, n: int = 1, temperature: float = 1.0, latent_hw: tuple[int, int] = (4, 4)) -> torch.Tensor:
        """Draw ``n`` images from the prior; the output is ``max_stride·latent_hw`` pixels, in [0, 1]."""
        f = self._run_decoder(self.top_feature(n, *latent_hw), lambda b, f: b.sample(f, temperature))
        return self.postprocess(self.out_net.conv_mean(f) if self.lossless else f)

    # -- entropy coding ------------------------------------------------------------------------
    def compress_mode(self, enabled: bool = True) -> QResVAE:
        """Fill the entropy coders' state-dict buffers with the canonical tables (checkpoints that
        should carry them, as the authors' code expects); coding does not need it."""
        if enabled:
            for block in self._latents:
                block.discrete_gaussian.fill_tables()
        return self

    @torch.no_grad()
    def encode_latents(self, im: torch.Tensor, lmb: float | Sequence[float] | torch.Tensor | None = None):
        """Entropy-code a batch whose sides are multiples of :attr:`max_stride`: one list per latent
        block (decoder order) of one :class:`CodedLatent` per image, and the latent grid size."""
        self._check_image(im)
        n, _, h, w = im.shape
        self.lmb_tensor(lmb, n)  # only this member's λ
        grid = (h // self.max_stride, w // self.max_stride)
        coded: list[list[CodedLatent]] = []
        with coding_arithmetic(im.device):
            feats = self.encode_features(self.preprocess(im))

            def latent(block: QLatentBlock, f: torch.Tensor) -> torch.Tensor:
                f, c = block.encode(f, feats[int(f.shape[2])])
                coded.append(c)
                return f

            f = self._run_decoder(self.top_feature(n, *grid), latent, until_last_latent=not self.lossless)
            if self.lossless:
                centres, scales = self.out_net.coding_params(f)
                coded.append(encode_integers(torch.round(im * 255), centres, scales, PIXEL_TABLES))
        return coded, grid

    @torch.no_grad()
    def decompress_latents(
        self,
        strings: Sequence[Sequence[bytes | CodedLatent]],
        lmb: float | Sequence[float] | torch.Tensor | None,
        latent_hw: tuple[int, int],
        batch: int = 1,
    ) -> torch.Tensor:
        """Decode :meth:`encode_latents`' output (or a prefix of it: the deeper latents take their
        prior mean); returns x̂. Plain ``bytes`` strings are verified by their rANS end state."""
        blocks = self.latent_blocks
        if len(strings) > len(blocks):
            raise ValueError(f"expected at most {len(blocks)} latent strings, got {len(strings)}")
        n = len(strings[0]) if strings else batch
        self.lmb_tensor(lmb, n)
        coded = [[s if isinstance(s, CodedLatent) else CodedLatent(bytes(s)) for s in block] for block in strings]
        queue = iter(coded)

        def latent(block: QLatentBlock, f: torch.Tensor) -> torch.Tensor:
            given = next(queue, None)
            return block.predict(f) if given is None else block.decode(f, given)

        f = self.top_feature(n, *latent_hw)
        with coding_arithmetic(f.device):
            f = self._run_decoder(f, latent)
            if not self.lossless:
                return f
            pixels = next(queue, None)
            if pixels is None:  # a prefix without the pixels: their predicted mean (a lossy preview)
                return self.out_net.conv_mean(f).contiguous()
            centres, scales = self.out_net.coding_params(f)
            values = decode_integers(pixels, centres, scales, PIXEL_TABLES)
            return (values.float() - PixelOutput.STEP) / PixelOutput.STEP
