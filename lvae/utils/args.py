"""Small helpers shared by the scripts: safe parsing of command-line model arguments, and an
argument parser whose usage errors are one line."""
from __future__ import annotations

import argparse
import ast
from typing import Any

__all__ = ["parse_model_args", "OneLineArgumentParser"]


class OneLineArgumentParser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_model_args(text: str | None) -> dict[str, Any]:
    """Parse ``--model_args`` safely (no ``eval``).

    Accepts a Python/JSON dict literal (``"{'dec_final_depth': 2}"``) or comma-separated
    ``key=value`` pairs (``"embed_dim=64, enc_depths=(1,1,1,1,1)"``); values are literals.
    """
    if text is None or not text.strip():
        return {}
    s = text.strip()
    try:
        if s.startswith("{"):
            value = ast.literal_eval(s)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError
            return value
        node = ast.parse(f"f({s})", mode="eval").body
        if not isinstance(node, ast.Call) or node.args:
            raise ValueError
        return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(
            f"cannot parse model arguments {text!r}: give a dict literal like \"{{'embed_dim': 64}}\" "
            "or key=value pairs like \"embed_dim=64, dec_final_depth=2\" (values must be literals)"
        ) from None
