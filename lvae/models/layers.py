"""Building blocks of QARV: λ embedding, adaptive ConvNeXt block, patch down/up-sampling, markers.

Every block here is a plain ``nn.Module`` whose parameter names follow the published
checkpoint (docs/model.md), so that ``load_state_dict(strict=True)`` works on it.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.system import cpu_info

__all__ = [
    "sinusoidal_embedding",
    "LambdaEmbedding",
    "Mlp",
    "ConvNeXtBlockAdaLN",
    "ConvNeXtBlock",
    "patch_downsample",
    "patch_upsample",
    "FeatureMark",
    "DecoderStopMark",
    "bf16_mlps",
    "bf16_mlps_supported",
    "GELU_PATHS",
    "gelu_path",
    "set_gelu_path",
    "cpu_paths",
]


def sinusoidal_embedding(s: torch.Tensor, dim: int, max_period: float = 64.0) -> torch.Tensor:
    """Embed a batch of scalars ``s`` (shape N) into N×dim as ``[cos(s·f), sin(s·f)]``.

    The frequencies are ``max_period ** -linspace(0, 1, dim // 2)``; cosines come first.
    """
    if dim % 2 != 0:
        raise ValueError(f"embedding width must be even, got {dim}")
    half = dim // 2
    freqs = max_period ** -torch.linspace(0, 1, half, device=s.device, dtype=torch.float32)
    angles = s.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class LambdaEmbedding(nn.Sequential):
    """λ → conditioning vector: a sinusoidal code of ``ln(λ)`` followed by a two-layer MLP.

    ``ln(λ)`` is scaled so that λ = 8192 maps to 64, the longest period of the code. The module
    is the MLP itself, ``Linear → GELU → Linear`` (state-dict children 0 and 2).
    """

    def __init__(self, dim: int = 256, max_lmb: float = 8192.0, max_period: float = 64.0):
        super().__init__(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.dim = dim
        self.scale = max_period / math.log(max_lmb)
        self.max_period = max_period

    def forward(self, lmb: torch.Tensor) -> torch.Tensor:
        s = torch.log(lmb) * self.scale
        return super().forward(sinusoidal_embedding(s, self.dim, self.max_period))


class Mlp(nn.Module):
    """Two linear layers with an exact GELU between them (channels-last input)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inference takes ConvNeXtBlockAdaLN._mlp_residual_onednn instead (fused, same values).
        return self.fc2(self.act(self.fc1(x)))


# Inference on the CPU fuses fc1 with the exact GELU and fc2 with the block's residual (oneDNN post-ops).
# A fused MLP whose hidden activations (tokens × hidden × 4 bytes) exceed _MLP_CHUNK_BYTES runs in
# chunks of _MLP_CHUNK_ROWS tokens, so that fc1's output is read back from cache, not memory. Measured
# on qarv_base at 768×512 (docs/speed.md): the encoder's 1/4 stage (38 MB) gains from chunks; the
# decoder's MLPs (≤ 19 MB) lose to the copy of each chunk's output (8 % of a decode with 2,048-token
# chunks everywhere).
_MLP_CHUNK_BYTES = 24 << 20
_MLP_CHUNK_ROWS = 8192
_ONEDNN_FUSED = [True]

# bfloat16 MLPs (oneDNN; AMX on recent Intel CPUs), for what only an encoder computes: see
# :func:`bf16_mlps`. The residual stream, LayerNorm and depthwise convolutions stay float32.
_BF16_MLPS: contextvars.ContextVar[bool] = contextvars.ContextVar("lvae_bf16_mlps", default=False)


@contextlib.contextmanager
def bf16_mlps(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU inference runs the blocks' MLPs in bfloat16 (weights and
    activations; sums and the residual in float32).

    Only for computations a decoder never repeats (the bottom-up encoder, the posterior): their
    results choose the coded symbols, not the probabilities both sides must agree on.
    """
    token = _BF16_MLPS.set(enabled)
    try:
        yield
    finally:
        _BF16_MLPS.reset(token)


@functools.cache
def _bf16_linears_run() -> bool:
    """oneDNN runs bfloat16 linears (with the GELU post-op the MLPs use) on this CPU: it needs
    AVX-512 with bfloat16 instructions or AMX (``ONEDNN_MAX_CPU_ISA`` may lower what it uses)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        x = torch.ones(4, 8, dtype=torch.bfloat16)
        w = torch.ones(16, 8, dtype=torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(x, w, torch.zeros(16, dtype=torch.bfloat16), "gelu", [], "none")
        return out.shape == (4, 16) and bool(torch.isfinite(out.float()).all())
    except (RuntimeError, AttributeError, NotImplementedError, TypeError):
        return False


def bf16_mlps_supported(device: torch.device | str = "cpu") -> bool:
    """Whether :func:`bf16_mlps` runs the MLPs in bfloat16 on ``device``: CPU inference on a CPU
    whose oneDNN computes bfloat16 linears (checked once per process by running one)."""
    return torch.device(device).type == "cpu" and _ONEDNN_FUSED[0] and _bf16_linears_run()


# Where fc1's exact GELU runs in CPU inference, chosen once per process from the CPU (see gelu_path):
# "fused": oneDNN's GELU post-op inside fc1's call; "separate": fc1 alone, then ATen's GELU in place.
# Both compute the exact (erf) GELU, equal up to float rounding. oneDNN's AVX2 GELU post-op is slow:
# measured on real activations (benchmarks/mlp_paths.py, docs/speed.md), "separate" is the faster path
# where oneDNN runs AVX2 kernels and "fused" where it runs AVX-512 ones.
GELU_PATHS = ("fused", "separate")
_GELU_PATH: list[str | None] = [None]  # None: the CPU's choice


@functools.cache
def _cpu_gelu_path() -> str:
    avx512 = cpu_info().onednn_avx512
    if avx512 is None:  # no /proc/cpuinfo: ATen's own vector level says whether the CPU has AVX-512
        avx512 = torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
    return "fused" if avx512 else "separate"


def gelu_path() -> str:
    """``"fused"`` or ``"separate"``: where CPU inference computes the MLPs' GELU (chosen from the
    CPU's instruction sets and oneDNN's limit at first use; :func:`set_gelu_path` overrides it)."""
    return _GELU_PATH[0] or _cpu_gelu_path()


def set_gelu_path(path: str | None) -> None:
    """Force one of :data:`GELU_PATHS` (benchmarks, tests); ``None`` returns to the CPU's choice."""
    if path is not None and path not in GELU_PATHS:
        raise ValueError(f"GELU path must be one of {', '.join(GELU_PATHS)} or None, got {path!r}")
    _GELU_PATH[0] = path


def cpu_paths() -> dict[str, str]:
    """The CPU code paths this process takes, in words (``lvae info --system``, benchmark headers)."""
    where = {"fused": "oneDNN's post-op in fc1", "separate": "ATen's, after fc1"}[gelu_path()]
    why = "forced" if _GELU_PATH[0] is not None else (
        "oneDNN runs AVX-512 kernels here" if _cpu_gelu_path() == "fused" else "oneDNN runs no AVX-512 kernels here")
    bf16 = "available" if bf16_mlps_supported("cpu") else "not available (float32 only)"
    return {"MLP GELU": f"{gelu_path()} ({where}; {why})", "bfloat16 encoder": bf16}


def _onednn_fused_ok(x: torch.Tensor) -> bool:
    return (
        _ONEDNN_FUSED[0]
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
    )


class _ConvNeXtCore(nn.Module):
    """What every ConvNeXt block here shares: the depthwise convolution and ``x + gamma · MLP(h)``
    (fused with oneDNN for CPU inference). Subclasses own the parameters (``gamma``, ``conv_dw``,
    ``mlp``, in their published state-dict order) and the normalization between the two."""

    dim: int
    kernel_size: int
    gamma: nn.Parameter
    conv_dw: nn.Conv2d
    mlp: Mlp

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_dw(x)`` for a channels-last ``x``; the output is N, H, W, C (contiguous)."""
        # NOTE: the block runs channels-last: with ``x`` in torch.channels_last the depthwise
        # convolution's output is NHWC in memory, so the permute to N, H, W, C is free, the
        # linears read it in place and the permute back is again channels-last, like ``x``.
        if self.kernel_size == 1:  # a 1×1 depthwise convolution is a per-channel affine map
            # NOTE: torch runs it as one slow convolution per channel (≈1000 calls a block).
            h = torch.addcmul(self.conv_dw.bias[:, None, None], x, self.conv_dw.weight[:, 0])  # type: ignore[index]
        else:
            h = self.conv_dw(x)
        return h.permute(0, 2, 3, 1).contiguous()  # N, H, W, C (no copy when NHWC)

    def _mlp_residual(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x + gamma · MLP(h)``; ``h`` is N, H, W, C, the result N, C, H, W (channels-last)."""
        if _onednn_fused_ok(h):
            if _BF16_MLPS.get():
                # NOTE: no fallback here: QARV.set_encoder_precision refuses bfloat16 where
                # bf16_mlps_supported() is False, so an encode never switches arithmetic midway.
                return self._mlp_residual_bf16(h, x)
            try:
                return self._mlp_residual_onednn(h, x)
            except (RuntimeError, AttributeError, NotImplementedError, TypeError):
                _ONEDNN_FUSED[0] = False  # this torch build lacks the ops: the plain path from now on
        h = self.mlp(h).permute(0, 3, 1, 2)  # N, C, H, W, channels-last in memory
        return torch.addcmul(x, self.gamma.view(1, -1, 1, 1), h)

    def _mlp_residual_onednn(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x + gamma · MLP(h)`` as two oneDNN linears with post-ops (CPU inference).

        fc1 is followed by the exact GELU (oneDNN's post-op or ATen's: :func:`gelu_path`); fc2
        carries ``gamma`` folded into its weight and bias (``gamma·(Wh + b) = (gamma·W)h + gamma·b``)
        and adds ``x`` as it writes, so the residual costs no extra pass over memory. Same values
        up to float rounding.
        """
        w1, b1, w2, b2 = self._inference_weights(torch.float32)
        linear = torch.ops.mkldnn._linear_pointwise
        fused = gelu_path() == "fused"

        def fc1(rows: torch.Tensor) -> torch.Tensor:
            if fused:
                return linear(rows, w1, b1, "gelu", [], "none")
            return torch.ops.aten.gelu_(linear(rows, w1, b1, "none", [], "none"))

        n, hh, ww, c = h.shape
        rows, res = h.reshape(-1, c), x.permute(0, 2, 3, 1).reshape(-1, c)  # views: both NHWC in memory
        if rows.shape[0] * w1.shape[0] * 4 <= _MLP_CHUNK_BYTES:
            out = linear.binary(fc1(rows), res, w2, b2, "add")
        else:
            # NOTE: fc1's output of tens of MB, written and read back from memory, makes the pair
            # memory-bound; row chunks keep it in cache (the copy of each chunk's output costs less).
            out = torch.empty_like(res)
            for s in range(0, rows.shape[0], _MLP_CHUNK_ROWS):
                part = fc1(rows[s : s + _MLP_CHUNK_ROWS])
                out[s : s + _MLP_CHUNK_ROWS] = linear.binary(part, res[s : s + _MLP_CHUNK_ROWS], w2, b2, "add")
        return out.reshape(n, hh, ww, c).permute(0, 3, 1, 2)  # N, C, H, W, channels-last in memory

    def _inference_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """fc1's weight and bias, and fc2's with ``gamma`` folded in, in ``dtype``; computed once
        and kept until a parameter changes (torch's in-place version counters)."""
        m = self.mlp
        params = (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, self.gamma)
        key = (dtype, *((p.data_ptr(), p.device, p._version) for p in params))
        cache = self.__dict__.setdefault("_inference_cache", {})  # a plain attribute: not in the state dict
        cached = cache.get(dtype)
        if cached is None or cached[0] != key:
            g = self.gamma.reshape(-1)
            weights = (m.fc1.weight, m.fc1.bias, m.fc2.weight * g[:, None], m.fc2.bias * g)
            cached = (key, tuple(w.detach().to(dtype).contiguous() for w in weights))
            cache[dtype] = cached
        return cached[1]

    def _mlp_residual_bf16(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x + gamma · MLP(h)`` with the MLP in bfloat16 (see :func:`bf16_mlps`)."""
        w1, b1, w2, b2 = self._inference_weights(torch.bfloat16)
        linear = torch.ops.mkldnn._linear_pointwise
        n, hh, ww, c = h.shape
        rows, res = h.reshape(-1, c).to(torch.bfloat16), x.permute(0, 2, 3, 1).reshape(-1, c)
        out = torch.empty_like(res)
        for s in range(0, rows.shape[0], _MLP_CHUNK_ROWS):
            part = linear(rows[s : s + _MLP_CHUNK_ROWS], w1, b1, "gelu", [], "none")
            # float32 + bfloat16 promotes to float32 in one pass: the residual keeps full precision
            torch.add(res[s : s + _MLP_CHUNK_ROWS], linear(part, w2, b2, "none", [], "none"),
                      out=out[s : s + _MLP_CHUNK_ROWS])
        return out.reshape(n, hh, ww, c).permute(0, 3, 1, 2)


class ConvNeXtBlockAdaLN(_ConvNeXtCore):
    """ConvNeXt block whose LayerNorm is modulated by the λ embedding (the paper's CNB; docs/model.md).

    ``h = dwconv(x)``; ``h = LN(h)·(1 + scale) + shift`` with ``(shift, scale)`` from the
    embedding; ``out = x + gamma · MLP(h)``.
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int = 256,
        kernel_size: int = 7,
        mlp_ratio: float = 2.0,
        layer_scale_init: float = 1e-6,
    ):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        hidden = int(mlp_ratio * dim)
        # NOTE: parameters are created in this order because it is the published state-dict order.
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init)))
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.embedding_layer = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, 2 * dim))
        self.mlp = Mlp(dim, hidden, dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        h = self._depthwise(x)
        shift, scale = self.embedding_layer(emb).chunk(2, dim=1)
        if h.shape[0] == 1:  # one image: the modulation is the LayerNorm's affine transform
            h = F.layer_norm(h, (self.dim,), weight=1 + scale[0], bias=shift[0], eps=1e-6)
        else:
            h = F.layer_norm(h, (self.dim,), eps=1e-6)
            h = torch.addcmul(shift[:, None, None, :], h, 1 + scale[:, None, None, :])
        return self._mlp_residual(h, x)


class ConvNeXtBlock(_ConvNeXtCore):
    """The plain ConvNeXt block (QRes-VAE): ``x + gamma · MLP(LN(dwconv(x)))``, LayerNorm with
    its own affine parameters; state-dict names and order as timm's ``ConvNeXtBlock``."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 2.0, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.layer_norm(self._depthwise(x), (self.dim,), self.norm.weight, self.norm.bias, eps=1e-6)
        return self._mlp_residual(h, x)


def patch_downsample(in_ch: int, out_ch: int, rate: int = 2) -> nn.Conv2d:
    """Non-overlapping patch merging: a ``rate``×``rate`` convolution with stride ``rate``."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=rate, stride=rate, padding=0)


def patch_upsample(in_ch: int, out_ch: int, rate: int = 2) -> nn.Sequential:
    """Sub-pixel upsampling: a 1×1 convolution to ``out_ch·rate²`` channels, then PixelShuffle."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch * rate * rate, kernel_size=1), nn.PixelShuffle(rate))


class FeatureMark(nn.Module):
    """Encoder marker: the feature map at this point is kept under ``key`` for the decoder."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def extra_repr(self) -> str:
        return f"key={self.key!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DecoderStopMark(nn.Module):
    """Decoder marker: no latent variable lies below this point, so encoding may stop here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
