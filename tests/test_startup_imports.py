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
        # argparse too: the lvae command installs its Ctrl-C handler before it (tests/test_cli_safety.py)
        "light = not {'torch', 'argparse', 'lvae.models.qarv', 'lvae.models.qres'} & set(sys.modules)\n"
        "names = lvae.list_models()\n"
        "sub = lvae.bitstream.__name__, lvae.metrics.bd_rate.__module__\n"
        "still_light = 'torch' not in sys.modules\n"
        "print(light, still_light, names, sub)\n"
    )
    proc = run_child(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "True", "True", "['qarv_base',", "'qarv_small',", "'qarv_tiny',", "'qres17m',", "'qres34m',",
        "'qres34m_lossless',", "'qres_tiny',", "'qres_tiny_lossless',",
        "'rd_model_base',", "'rd_model_tiny']",
        "('lvae.bitstream',", "'lvae.metrics')"
    ]


def test_unknown_attribute_is_an_attribute_error():
    import lvae

    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        lvae.no_such_module  # noqa: B018
    assert not hasattr(lvae, "_private")


def test_builtin_models_register_without_importing_the_network():
    """The built-in entry functions and their weights are known with no torch loaded (one table:
    the decorators in lvae/models/zoo.py); building one imports the network."""
    code = (
        "import json, sys, lvae\n"
        "from dataclasses import asdict\n"
        "from lvae.models import registry\n"
        "rows = {n: [registry._MODELS[n].fn.__module__, registry.model_weights(n) is not None]\n"
        "        for n in lvae.list_models()}\n"
        "light = 'torch' not in sys.modules\n"
        "lvae.get_model('qarv_tiny')\n"
        "print(json.dumps([rows, light, 'torch' in sys.modules]))\n"
    )
    proc = run_child(code)
    assert proc.returncode == 0, proc.stderr
    rows, light, loaded = json.loads(proc.stdout.splitlines()[-1])
    assert rows == {
        "qarv_base": ["lvae.models.zoo", True],
        "qarv_small": ["lvae.models.zoo", True],
        "qarv_tiny": ["lvae.models.zoo", False],
        "qres17m": ["lvae.models.zoo", True],
        "qres34m": ["lvae.models.zoo", True],
        "qres34m_lossless": ["lvae.models.zoo", True],
        "qres_tiny": ["lvae.models.zoo", False],
        "qres_tiny_lossless": ["lvae.models.zoo", False],
        "rd_model_base": ["lvae.models.zoo", True],
        "rd_model_tiny": ["lvae.models.zoo", False],
    }
    assert light and loaded


@pytest.fixture
def gc_restored():
    import gc

    enabled = gc.isenabled()
    yield gc
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("as_command", [True, False], ids=["lvae process", "in-process"])
def test_model_loads_with_the_collector_paused_only_in_the_lvae_process(monkeypatch, gc_restored, as_command):
    """The lvae process pauses Python's cyclic collector while torch imports and the model builds,
    then freezes what is alive (start-up, see benchmarks/startup.py); a caller's collector is left
    alone. A model that fails to load leaves the collector as it was too."""
    gc = gc_restored
    from lvae.cli import common, interrupt
    from lvae.models import registry

    seen = []

    def fake_load(name, weights, device):
        seen.append(gc.isenabled())
        if name == "broken":
            raise ValueError("no such weights")
        return f"model {name}"

    monkeypatch.setattr(interrupt.State, "command", as_command)
    monkeypatch.setattr(registry, "load_model", fake_load)
    gc.unfreeze()
    gc.enable()
    models = common.Models(None, "cpu")
    assert models.get("qarv_small") == "model qarv_small"
    assert gc.isenabled()
    assert (gc.get_freeze_count() > 0) is as_command
    gc.unfreeze()
    with pytest.raises(ValueError, match="no such weights"):
        models.get("broken")
    assert gc.isenabled()
    assert seen == [not as_command, not as_command]
    assert (gc.get_freeze_count() > 0) is as_command
