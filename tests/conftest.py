import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.models.fixed_weights import load_fixed_reference_weights

DATA = Path(__file__).parent / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LAMBDAS = (16, 128, 2048)


def exit_status(main, *args) -> int:
    """A command line's ``main(ARGS)`` run in-process: its exit status (usage errors exit through
    SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def load_image_tensor(path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def reference():
    """The authors' outputs on the fixed weights (tests/data/conformance.npz and friends)."""
    return {
        "npz": np.load(DATA / "conformance.npz"),
        "json": json.loads((DATA / "conformance.json").read_text()),
        "keys": json.loads((DATA / "qarv_base_state_dict.json").read_text()),
        "input": load_image_tensor(DATA / "conformance_input.png"),
        "odd": load_image_tensor(DATA / "conformance_odd.png"),
    }


@pytest.fixture(scope="session")
def qarv_fixed():
    """qarv_base with the fixed reference weights, eval mode, entropy tables built."""
    torch.manual_seed(0)
    model = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()
    model.compress_mode(True)
    return model


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return lvae.get_model("qarv_tiny")


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: the script benchmarks/<name>.py as a module, with its folder first on
    sys.path as when it runs (scripts there import their neighbours)."""

    def load(name: str):
        if str(BENCHMARKS) not in sys.path:
            sys.path.insert(0, str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
