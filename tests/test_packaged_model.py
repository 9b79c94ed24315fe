"""The model shipped inside the package (qarv_small): offline loading, and the committed Kodak results.

``results/qarv_small-kodak.json`` was made by ``eval-var-rate.py --model qarv_small`` on the 24
Kodak images; its per-image rows for kodim20 (copied to tests/data) are checked here at two λ.
"""
import hashlib
import json
from pathlib import Path

import pytest
import torch

import lvae
from lvae import bitstream
from lvae.io import load_image
from lvae.metrics import psnr
from lvae.models.registry import model_weights
from lvae.models.weights import resolve_weights

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
RESULTS = REPO / "results" / "qarv_small-kodak.json"
KODIM20_SHA256 = "1ae187d92b3a4483b6717f7fd08592846ffdfc340c6424f6756627a27f3d8ea7"  # Kodak's SHA256SUMS


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache, and any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_packaged_weights_load_offline(offline):
    w = model_weights("qarv_small")
    assert w.package_file and not w.url
    path = resolve_weights("qarv_small", w)
    assert path.is_relative_to(Path(lvae.__file__).parent)
    assert path.stat().st_size <= 20 * 2**20
    assert hashlib.sha256(path.read_bytes()).hexdigest() == w.sha256
    model = lvae.get_model("qarv_small", pretrained=True)
    assert sum(p.numel() for p in model.parameters()) == 4_393_120


@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


@pytest.fixture(scope="module")
def report():
    return json.loads(RESULTS.read_text())


def test_committed_results_are_this_model_on_kodak(report):
    assert report["name"] == "qarv_small" and report["test-set"] == "kodak"
    assert report["num-images"] == 24 and len(report["per-image"]) == 24 * len(report["lambdas"])
    assert hashlib.sha256((DATA / "kodim20.png").read_bytes()).hexdigest() == KODIM20_SHA256


@pytest.mark.parametrize("index", [3, 12])  # two λ of the committed 16-point sweep
def test_kodak_image_round_trip_matches_committed_results(small, report, index):
    """The latent strings are the committed run's, byte for byte; the decoded image its PSNR.

    The committed sweep wrote the current container (version 2): the file must have exactly its
    ``bytes``. The PSNR is the decoded image's, rounded to 8 bits as a PNG holds
    it; it may move by 1e-4 dB with the CPU's arithmetic (another oneDNN path decoding), not more.
    A model that is off anywhere (2 % too much λ in the λ embedding moves the file by 0.9 % and the
    PSNR by 0.03 dB at λ ≈ 42) fails both.
    """
    lmb = report["lambdas"][index]
    [row] = [r for r in report["per-image"] if r["image"] == "kodim20.png" and r["lmb"] == lmb]
    image = load_image(DATA / "kodim20.png")
    data = small.compress(image, lmb=lmb)
    header, strings = bitstream.unpack(data)
    assert (header.model_name, header.height, header.width) == ("qarv_small", 512, 768)
    assert header.lmb == pytest.approx(lmb, rel=1e-7)  # stored as float32
    assert header.version == 2 and len(data) == row["bytes"]
    decoded = small.decompress(data)
    assert decoded.shape == image.shape
    decoded = torch.round(decoded.clamp(0, 1) * 255) / 255  # what a PNG of it holds
    assert psnr(image, decoded) == pytest.approx(row["psnr"], abs=2e-3)
    assert row["bpp"] == pytest.approx(8 * row["bytes"] / (512 * 768), rel=1e-12)


def test_wheel_package_data_covers_the_weights():
    """pyproject's package-data puts the weights file into wheels (checked by pattern, not by a build)."""
    tomllib = pytest.importorskip("tomllib")
    from fnmatch import fnmatch

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lvae"]
    assert any(fnmatch(model_weights("qarv_small").package_file, p) for p in patterns)
