"""The discretized Gaussian of the latents: likelihoods, CDF tables and CDF indexes.

Each coded symbol ``round(z − μ)`` uses one of 64 quantized CDF tables, chosen by its prior
scale σ: the tables are built for the scales ``exp(linspace(ln 0.11, ln 20, 64))`` and a symbol
uses the first table whose scale is ≥ σ (σ clamped to ≥ 0.11), exactly as CompressAI's
``GaussianConditional`` does — the QARV authors' files depend on that rule.

QRes-VAE's latents use another set (:data:`QRES_TABLES`): 64 tables for the scales
``exp(linspace(ln 0.1, ln 20, 64))`` as the authors' code computes them (in float32), with σ
still clamped to ≥ 0.11. Everything below takes the set as an argument (default: QARV's).

The tables are constants: they are shipped with the package (``lvae/data/coding/``) rather
than rebuilt with floating-point ``erfc`` on each machine, so every machine codes with the same
tables by construction. :func:`build_cdf_tables` rebuilds them (the tests check the shipped
copy against CompressAI's own construction).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .rans import CdfTables

__all__ = [
    "SCALE_MIN", "SCALE_MAX", "SCALE_LEVELS", "TAIL_MASS", "LIKELIHOOD_BOUND", "PRECISION",
    "qarv_scale_table", "scale_thresholds", "GaussianTables", "gaussian_tables", "build_cdf_tables",
    "DiscreteGaussian", "TABLE_BUFFERS", "entropy_coder_keys", "gaussian_bin_nll", "QARV_TABLES", "QRES_TABLES",
    "PIXEL_TABLES", "qres_scale_table",
]

SCALE_MIN = 0.11
SCALE_MAX = 20.0
SCALE_LEVELS = 64
TAIL_MASS = 1e-9
LIKELIHOOD_BOUND = 1e-9
PRECISION = 16
TABLE_FILE = Path(__file__).resolve().parent.parent / "data" / "coding" / "gaussian_cdf_64.json"
# SHA-256 of the canonical JSON of the tables (cdfs, lengths, offsets): checked at load.
TABLE_SHA256 = "0e2a74fa14dbd48395578aa34634e0ecdabd1c461530b3a723084e848d9e74ee"
QRES_TABLE_FILE = TABLE_FILE.parent / "gaussian_cdf_qres_64.json"
QRES_TABLE_SHA256 = "2c34b73978776e2e2728ce1bab67b7233dfa02d42185e710fe870e3ad4da7be2"
# The float32 table scales of QRes-VAE (exp(linspace(ln 0.1, ln 20, 64)) in float32, as the authors'
# code computes them), as their IEEE-754 bit patterns: constants, never recomputed on a machine.
QRES_SCALE_BITS = (
    1036831948, 1038009547, 1039290465, 1040435581, 1041193356, 1042017617, 1042914197, 1043889441, 1044950250,
    1046104132, 1047359254, 1048650250, 1049392763, 1050200423, 1051078947, 1052034550, 1053073995, 1054204639,
    1055434484, 1056772233, 1057595981, 1058387375, 1059248205, 1060184563, 1061203075, 1062310948, 1063516025,
    1064826832, 1065802931, 1066578388, 1067421881, 1068339381, 1069337381, 1070422943, 1071603750, 1072888158,
    1074013541, 1074773380, 1075599887, 1076498908, 1077476808, 1078540507, 1079697535, 1080956076, 1082227735,
    1082972272, 1083782133, 1084663049, 1085621254, 1086663531, 1087797257, 1089030451, 1090371846, 1091174985,
    1091968535, 1092831710, 1093770618, 1094791904, 1095902795, 1097111157, 1098425535, 1099381441, 1100159009,
    1101004800,
)
# QRes-VAE's lossless model codes pixels with 128 tables for exp(linspace(ln 0.11, ln 20, 128)),
# again as float32 bit patterns of the authors' computation (CompressAI's float32 bound 0.11).
PIXEL_TABLE_FILE = TABLE_FILE.parent / "gaussian_cdf_qres_pixels_128.json"
PIXEL_TABLE_SHA256 = "e7f82d3e11eb9a790cb4b8b93c756a0363ee04de44e686c657ec83a4a64fa67f"
PIXEL_SCALE_BITS = (
    1038174126, 1038791546, 1039434783, 1040104923, 1040495238, 1040858919, 1041237808, 1041632541, 1042043784,
    1042472223, 1042918579, 1043383601, 1043868070, 1044372800, 1044898638, 1045446465, 1046017202, 1046611807,
    1047231278, 1047876656, 1048549022, 1048912753, 1049277641, 1049657789, 1050053835, 1050466444, 1050896307,
    1051344147, 1051810715, 1052296795, 1052803202, 1053330788, 1053880436, 1054453070, 1055049652, 1055671181,
    1056318704, 1056978956, 1057330362, 1057696464, 1058077876, 1058475238, 1058889218, 1059320510, 1059769838,
    1060237958, 1060725653, 1061233743, 1061763082, 1062314557, 1062889095, 1063487659, 1064111255, 1064760929,
    1065395494, 1065748068, 1066115387, 1066498067, 1066896750, 1067312105, 1067744831, 1068195653, 1068665328,
    1069154644, 1069664426, 1070195524, 1070748832, 1071325280, 1071925834, 1072551502, 1073203336, 1073812126,
    1074165872, 1074534412, 1074918364, 1075318372, 1075735109, 1076169272, 1076621593, 1077092829, 1077583772,
    1078095245, 1078628110, 1079183257, 1079761620, 1080364170, 1080991918, 1081645918, 1082228851, 1082583773,
    1082953537, 1083338765, 1083740102, 1084158225, 1084593832, 1085047655, 1085520457, 1086013032, 1086526207,
    1087060841, 1087617834, 1088198119, 1088802672, 1089432508, 1090088680, 1090645668, 1091001771, 1091372763,
    1091759272, 1092161943, 1092581455, 1093018508, 1093473842, 1093948217, 1094442427, 1094957308, 1095493718,
    1096052563, 1096634779, 1097241339, 1097873269, 1098531622, 1099062579, 1099419866, 1099792091, 1100179885,
    1100583894, 1101004800,
)
QARV_TABLES = "qarv"
QRES_TABLES = "qres"
PIXEL_TABLES = "qres_pixels"


def qarv_scale_table() -> list[float]:
    """``exp(linspace(ln 0.11, ln 20, 64))`` in float64: the scales the CDF tables are built for.

    NOTE: computed in float64 and only then rounded to float32; a float32 computation differs by
    one ulp in 36 of the 64 entries, which moves the table boundaries and so changes the bytes.
    """
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
    return [math.exp(math.log(SCALE_MIN) + i * step) for i in range(SCALE_LEVELS)]


def qres_scale_table() -> list[float]:
    """QRes-VAE's 64 table scales (float32 values, as Python floats)."""
    return _from_bits(QRES_SCALE_BITS)


def _from_bits(bits: tuple[int, ...]) -> list[float]:
    import struct

    return [struct.unpack("<f", struct.pack("<I", b))[0] for b in bits]


def _table_scales(kind: str) -> list[float]:
    if kind == QARV_TABLES:
        return qarv_scale_table()
    if kind == QRES_TABLES:
        return qres_scale_table()
    if kind == PIXEL_TABLES:
        return _from_bits(PIXEL_SCALE_BITS)
    raise ValueError(f"unknown CDF table set {kind!r}")


@functools.cache
def _thresholds_cpu(kind: str = QARV_TABLES) -> torch.Tensor:
    return torch.tensor(_table_scales(kind), dtype=torch.float32)


def scale_thresholds(device: torch.device | str = "cpu", kind: str = QARV_TABLES) -> torch.Tensor:
    """The 64 table scales in float32 (the values σ is compared with), on ``device``."""
    return _thresholds_cpu(kind).to(device)


@dataclass(frozen=True)
class GaussianTables:
    """The quantized CDF tables, as tensors (for the state dict) and as the coder's lists."""

    quantized_cdf: torch.Tensor  # int32, 64 × max_length
    cdf_length: torch.Tensor  # int32, 64
    offset: torch.Tensor  # int32, 64
    coder: CdfTables


def _canonical_json(cdfs: list[list[int]], lengths: list[int], offsets: list[int]) -> bytes:
    return json.dumps({"cdfs": cdfs, "lengths": lengths, "offsets": offsets}, separators=(",", ":")).encode()


def build_cdf_tables(kind: str = QARV_TABLES) -> tuple[list[list[int]], list[int], list[int]]:
    """Build the 64 tables the way CompressAI's ``GaussianConditional.update()`` does, on the CPU.

    Returns ``(cdfs, lengths, offsets)``: row ``i`` of ``cdfs`` holds ``lengths[i]`` values (the
    quantized CDF of ``pmf_length`` symbols, the tail mass, and the closing 2**16).
    """
    from scipy.stats import norm  # only needed to build the constants

    from .rans import _load_cxx

    pmf_to_quantized_cdf = _load_cxx().pmf_to_quantized_cdf
    table = torch.tensor(_table_scales(kind), dtype=torch.float32)
    multiplier = -float(norm.ppf(TAIL_MASS / 2))
    pmf_center = torch.ceil(table * multiplier).int()
    pmf_length = 2 * pmf_center + 1
    max_length = int(pmf_length.max())
    samples = torch.abs(torch.arange(max_length).int() - pmf_center[:, None]).float()
    scale = table.unsqueeze(1)

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.erfc(float(-(2**-0.5)) * x)

    upper = cdf((0.5 - samples) / scale)
    lower = cdf((-0.5 - samples) / scale)
    pmf = upper - lower
    tail = 2 * lower[:, :1]
    cdfs = []
    for i in range(len(table)):
        prob = torch.cat((pmf[i, : int(pmf_length[i])], tail[i]))
        cdfs.append([int(v) for v in pmf_to_quantized_cdf(prob.tolist(), PRECISION)])
    lengths = [int(v) + 2 for v in pmf_length]
    offsets = [-int(v) for v in pmf_center]
    return cdfs, lengths, offsets


def write_table_file(path: Path = TABLE_FILE, kind: str = QARV_TABLES) -> str:
    """(Re)write the shipped table file; returns its SHA-256. Used once, when the file was made."""
    cdfs, lengths, offsets = build_cdf_tables(kind)
    payload = _canonical_json(cdfs, lengths, offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload + b"\n")
    return hashlib.sha256(payload).hexdigest()


@functools.cache
def gaussian_tables(kind: str = QARV_TABLES) -> GaussianTables:
    """The shipped tables of set ``kind`` (checked against their SHA-256), converted once per process."""
    path, expected = {
        QARV_TABLES: (TABLE_FILE, TABLE_SHA256),
        QRES_TABLES: (QRES_TABLE_FILE, QRES_TABLE_SHA256),
        PIXEL_TABLES: (PIXEL_TABLE_FILE, PIXEL_TABLE_SHA256),
    }[kind]
    raw = path.read_bytes().strip()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        raise RuntimeError(f"the CDF table file {path} is damaged (SHA-256 {digest[:16]}…); reinstall lvae")
    d = json.loads(raw)
    cdfs, lengths, offsets = d["cdfs"], d["lengths"], d["offsets"]
    width = max(len(c) for c in cdfs)
    quantized = torch.zeros(len(cdfs), width, dtype=torch.int32)
    for i, c in enumerate(cdfs):
        quantized[i, : len(c)] = torch.tensor(c, dtype=torch.int32)
    return GaussianTables(
        quantized_cdf=quantized,
        cdf_length=torch.tensor(lengths, dtype=torch.int32),
        offset=torch.tensor(offsets, dtype=torch.int32),
        coder=CdfTables(cdfs, lengths, offsets),
    )


class _Bound(nn.Module):
    """Holds one ``bound`` buffer: the published state dict has these two entries per latent."""

    bound: torch.Tensor

    def __init__(self, value: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(value)]))


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-_INV_SQRT2 * x)


# The derived CDF-table buffers of a DiscreteGaussian: stored empty or filled, any shape.
TABLE_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")


class DiscreteGaussian(nn.Module):
    """Entropy model of one latent: discretized Gaussian likelihood and CDF indexes.

    Its state-dict entries are those of CompressAI's ``GaussianConditional`` in the published
    checkpoint: the three table buffers (empty or filled: they are derived data, filled by
    :meth:`fill_tables` for checkpoints that want them, never read for coding) and two bounds.
    ``kind``: the set of CDF tables (:data:`QARV_TABLES` or :data:`QRES_TABLES`); QRes-VAE's
    checkpoints also hold CompressAI's ``scale_table`` (empty or filled) and ``scale_bound``.
    """

    lower_bound_scale: _Bound
    likelihood_lower_bound: _Bound

    def __init__(self, kind: str = QARV_TABLES):
        super().__init__()
        self.kind = kind
        for name in TABLE_BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.int32))
        if kind == QRES_TABLES:
            self.register_buffer("scale_table", torch.zeros(0))
            self.register_buffer("scale_bound", torch.tensor([SCALE_MIN]))
        elif kind != QARV_TABLES:
            raise ValueError(f"unknown CDF table set {kind!r}")
        self.likelihood_lower_bound = _Bound(LIKELIHOOD_BOUND)
        self.lower_bound_scale = _Bound(SCALE_MIN)

    def fill_tables(self) -> None:
        """Copy the canonical tables into the state-dict buffers (for checkpoints that carry them)."""
        t = gaussian_tables(self.kind)
        device = self.lower_bound_scale.bound.device
        self._quantized_cdf = t.quantized_cdf.to(device)
        self._cdf_length = t.cdf_length.to(device)
        self._offset = t.offset.to(device)
        if self.kind == QRES_TABLES:
            self.scale_table = scale_thresholds(device, self.kind)

    @property
    def ready(self) -> bool:
        """True when the table buffers are filled (they are not needed for coding)."""
        return self._quantized_cdf.numel() > 0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # NOTE: the buffers take whatever size the loaded state dict has (empty or filled).
        for name in TABLE_BUFFERS + (("scale_table",) if self.kind == QRES_TABLES else ()):
            key = prefix + name
            if key in state_dict and torch.is_tensor(state_dict[key]):
                current = getattr(self, name)
                self._buffers[name] = torch.empty(state_dict[key].shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def quantize(z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """``round(z − μ) + μ``: the value the decoder reconstructs."""
        return torch.round(z - means) + means

    def likelihood(self, z_hat: torch.Tensor, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin around ``z_hat`` (what CompressAI's layer computes)."""
        v = torch.abs(z_hat - means)
        s = torch.max(scales, self.lower_bound_scale.bound)
        p = _std_normal_cdf((0.5 - v) / s) - _std_normal_cdf((-0.5 - v) / s)
        return torch.max(p, self.likelihood_lower_bound.bound)

    def forward(self, z: torch.Tensor, scales: torch.Tensor, means: torch.Tensor):
        """Evaluation mode: the rounded latent and its likelihood."""
        z_hat = self.quantize(z, means)
        return z_hat, self.likelihood(z_hat, means, scales)

    @staticmethod
    def indexes(scales: torch.Tensor, kind: str = QARV_TABLES) -> torch.Tensor:
        """CDF index of each scale: the number of table scales strictly below ``max(σ, 0.11)``.

        Float32 comparisons only (no arithmetic), so equal scales give equal indexes on every device.
        """
        t = scale_thresholds(scales.device, kind)
        s = torch.clamp_min(scales.float(), SCALE_MIN)
        return torch.searchsorted(t[:-1].contiguous(), s.contiguous(), right=False).to(torch.int32)


def gaussian_bin_nll(z: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Negative log-probability (nats, elementwise) of the unit-width bin around ``z`` (training).

    ``P = Φ((z+½−μ)/σ) − Φ((z−½−μ)/σ)``; where ``P ≤ 1e-6`` the Gaussian log-density at ``z``
    is used instead (its bin width is 1), which keeps gradients alive far in the tails.
    """
    v = torch.abs(z - mean)
    upper = _std_normal_cdf((0.5 - v) / scale)
    lower = _std_normal_cdf((-0.5 - v) / scale)
    prob = upper - lower
    log_bin = torch.log(torch.clamp(prob, min=1e-8))
    log_density = -0.5 * (v / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return -torch.where(prob > 1e-6, log_bin, log_density)


def entropy_coder_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None) -> frozenset[str]:
    """The state-dict keys of ``model``'s entropy coders (every :class:`DiscreteGaussian`: its
    tables and bounds): constants of the coder, not learned weights. The weights fingerprint and
    the fixed reference weights leave them out. ``state_dict``: the model's, if already at hand."""
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, DiscreteGaussian))
    keys = model.state_dict() if state_dict is None else state_dict
    return frozenset(k for k in keys if prefixes and k.startswith(prefixes))
