"""Small helpers shared by the command lines: argument parsers whose long options take either
spelling and whose usage errors are one line, and safe parsing of command-line model arguments."""
from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["parse_model_args", "ArgumentParser", "OneLineArgumentParser", "respell"]


def _canonical(option: str) -> str:
    return "--" + option[2:].replace("-", "_")


def respell(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """``args`` with each long option that ``parser`` knows under the other spelling written as
    the parser knows it: ``--dataset-name`` for ``--dataset_name`` and back (``--bf16_encoder=1``
    too). Everything after ``--``, values, and options the parser does not know stay as they are."""
    known = parser._option_string_actions
    spellings: dict[str, str] = {}
    for option in known:
        if option.startswith("--"):
            spellings.setdefault(_canonical(option), option)
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if not arg.startswith("--") or len(arg) <= 2:
            continue
        name, eq, value = arg.partition("=")
        if name not in known and _canonical(name) in spellings:
            out[i] = spellings[_canonical(name)] + eq + value
    return out


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose long options take both spellings, ``--dataset-name`` and
    ``--dataset_name``, ``--bf16-encoder`` and ``--bf16_encoder`` (``--help`` shows the one the
    option was defined with). Its subparsers are of the same class, so a whole command tree gets it."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(respell(self, sys.argv[1:] if args is None else args), namespace)


class OneLineArgumentParser(ArgumentParser):
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
