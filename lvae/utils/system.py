"""What this CPU offers the network's kernels: its model name and the instruction sets that decide
which of two equivalent code paths is faster (read from ``/proc/cpuinfo`` and the environment,
without torch; :func:`lvae.models.layers.cpu_paths` says what was chosen from it)."""
from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ISAS", "CpuInfo", "cpu_info", "parse_cpuinfo"]

#: The instruction sets reported, each with the /proc/cpuinfo flag that says the CPU has it.
ISAS = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-BF16": "avx512_bf16", "AMX": "amx_tile"}

# oneDNN reads ONEDNN_MAX_CPU_ISA (DNNL_MAX_CPU_ISA in older releases) once: the highest instruction
# set its kernels may use. Values at or above AVX-512: these prefixes, and "ALL"/"DEFAULT" (no limit).
_ONEDNN_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_AVX512_OR_ABOVE = ("AVX512", "AVX10", "ALL", "DEFAULT")


@dataclass(frozen=True)
class CpuInfo:
    """``isas``: the instruction sets of :data:`ISAS` the CPU has (None: unknown, no /proc/cpuinfo);
    ``onednn_limit``: ``(variable, value)`` when the environment limits oneDNN's kernels."""

    model: str
    logical_cpus: int
    isas: tuple[str, ...] | None
    onednn_limit: tuple[str, str] | None = None

    @property
    def onednn_avx512(self) -> bool | None:
        """Whether oneDNN may run AVX-512 kernels here (None: the CPU's flags are unknown)."""
        if self.onednn_limit is not None and not self.onednn_limit[1].upper().startswith(_AVX512_OR_ABOVE):
            return False
        return None if self.isas is None else "AVX-512" in self.isas

    def isa_line(self) -> str:
        """``AVX2 yes, AVX-512 yes, AVX512-BF16 no, AMX no`` (+ the oneDNN limit when set)."""
        if self.isas is None:
            text = "instruction sets unknown (no /proc/cpuinfo)"
        else:
            text = ", ".join(f"{name} {'yes' if name in self.isas else 'no'}" for name in ISAS)
        if self.onednn_limit is not None:
            text += f"; oneDNN limited by {self.onednn_limit[0]}={self.onednn_limit[1]}"
        return text

    def describe(self) -> str:
        """One line: model, logical CPUs and instruction sets."""
        return f"{self.model}, {self.logical_cpus} logical CPUs; {self.isa_line()}"


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...]]:
    """The model name and the instruction sets of :data:`ISAS` in a ``/proc/cpuinfo`` text (first CPU)."""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return (model.group(1).strip() if model else None), tuple(name for name, flag in ISAS.items() if flag in flags)


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (read once per process; the environment as it was then)."""
    model: str | None = None
    isas: tuple[str, ...] | None = None
    try:
        model, isas = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        pass
    limit = next(((name, os.environ[name]) for name in _ONEDNN_ENV if os.environ.get(name)), None)
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", os.cpu_count() or 1,
                   isas, limit)
