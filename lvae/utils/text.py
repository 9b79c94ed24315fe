"""How messages write recurring values (standard library only, nothing imported: ``import lvae``
and the Ctrl-C handler's early start depend on it staying light)."""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_lambdas"]


def format_lambdas(values: Sequence[float]) -> str:
    """``{16, 32, 64}``: a set of λ (a fixed-λ family's members) as every message writes it."""
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"
