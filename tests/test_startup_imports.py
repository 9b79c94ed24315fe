"""Start-up: which modules the light commands import (a behaviour check, not a timing).

``lvae --help``, ``lvae models`` and ``lvae info`` must not import torch nor CompressAI (seconds
of start-up); ``import lvae`` must not import torch. Each check runs in a fresh interpreter.
The times themselves are measured by benchmarks/startup.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
HEAVY = ("torch", "compressai")

# Runs ``lvae.cli.main(argv)`` as the console script does, then names the heavy packages loaded.
CHILD = """
import contextlib, io, json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        from lvae.cli import main
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
print(json.dumps({"rc": rc, "out": out.getvalue(), "loaded": [m for m in heavy if m in sys.modules]}))
"""


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--help"], "compress"),
        (["models"], "qarv_small"),
        (["info", str(DATA / "legacy_lmb16.bits")], "format:   legacy"),
    ],
    ids=["help", "models", "info"],
)
def test_light_commands_import_neither_torch_nor_compressai(argv, expect):
    proc = run_child(CHILD, json.dumps(argv), json.dumps(HEAVY))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["rc"] in (0, None), proc.stderr
    assert expect in result["out"]
    assert result["loaded"] == [], f"`lvae {' '.join(argv)}` imported {result['loaded']}"


def test_import_lvae_is_light_and_submodules_load_on_use():
    code = (
        "import sys, lvae\n"
        "light = 'torch' not in sys.modules and 'lvae.models' not in sys.modules\n"
        "names = lvae.list_models()\n"
        "sub = lvae.bitstream.__name__, lvae.metrics.bd_rate.__module__\n"
        "still_light = 'torch' not in sys.modules\n"
        "print(light, still_light, names, sub)\n"
    )
    proc = run_child(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "True", "True", "['qarv_base',", "'qarv_small',", "'qarv_tiny']", "('lvae.bitstream',", "'lvae.metrics')"
    ]


def test_unknown_attribute_is_an_attribute_error():
    import lvae

    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        lvae.no_such_module  # noqa: B018
    assert not hasattr(lvae, "_private")


def test_builtin_table_matches_the_registered_models():
    """lvae.registry knows the built-ins without importing them; lvae.models must say the same."""
    code = (
        "import json, lvae.models\n"
        "from dataclasses import asdict\n"
        "from lvae import registry\n"
        "rows = {}\n"
        "for name in registry._BUILTIN:\n"
        "    e = registry._MODELS[name]\n"
        "    rows[name] = [isinstance(e.fn, registry._Deferred), e.weights and asdict(e.weights)]\n"
        "print(json.dumps([registry.list_models(), rows]))\n"
    )
    proc = run_child(code)
    assert proc.returncode == 0, proc.stderr
    names, registered = json.loads(proc.stdout.splitlines()[-1])
    from dataclasses import asdict

    from lvae import registry

    hint = "update _BUILTIN in lvae/registry.py to match the @register_model calls in lvae/models"
    assert names == sorted(registry._BUILTIN), hint
    declared = {name: [False, w and asdict(w)] for name, w in registry._BUILTIN.items()}
    assert registered == declared, hint
