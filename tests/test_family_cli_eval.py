"""A fixed-λ family through the command line and the evaluation (issue 23, points 5 and 6).

``tiny_family`` below is ``qres_tiny``'s network registered again as a family with published
weights: three members (λ 16, 64, 256), each with weights of its own (other random weights per
member) in a torch hub cache made in the test's folder — the published families' path (registry
→ hub cache → member), at a toy's cost.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import lvae
from lvae import cli
from lvae.bitstream import parse, read_header
from lvae.coding.pickled import pack_qres_legacy
from lvae.eval import anchors
from lvae.eval.plot import rd_figure
from lvae.io import load_image
from lvae.metrics import bd_rate
from lvae.models import Weights, register_model
from lvae.models.zoo import qres_tiny

from conftest import exit_status

DATA = Path(__file__).parent / "data"
MEMBERS = (16.0, 64.0, 256.0)
FAMILY = "tiny_family"


@register_model(lambdas=MEMBERS, weights=lambda lmb: Weights(filename=f"{FAMILY}-lmb{lmb:g}.pt"))
def tiny_family(lmb: float = 64, **overrides):
    """qres_tiny as a family of three members (no URL: weights only from the hub cache)."""
    return qres_tiny(lmb=lmb, **overrides)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two small images, and a hub cache holding each member's weights (other seeds each)."""
    root = tmp_path_factory.mktemp("family")
    src = Image.open(DATA / "kodim20.png").convert("RGB")
    (root / "images").mkdir()
    src.crop((100, 100, 164, 148)).save(root / "images" / "a.png")
    src.crop((300, 200, 340, 256)).save(root / "images" / "b.png")
    hub = root / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for i, lmb in enumerate(MEMBERS):
        torch.manual_seed(100 + i)
        torch.save({"model": qres_tiny(lmb=lmb).state_dict()}, hub / f"{FAMILY}-lmb{lmb:g}.pt")
    return root


@pytest.fixture()
def hub(work, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(work / "torch_home"))
    return work / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny jobs: threads only slow them on a loaded 2-core machine
    yield
    torch.set_num_threads(before)


def member(lmb: float):
    return lvae.get_model(FAMILY, lmb=lmb, pretrained=True).eval().compress_mode(True)


# -- evaluation -----------------------------------------------------------------------------------
def test_eval_sweeps_the_members_each_coded_by_its_own_network(work, hub, tmp_path, capsys):
    out = tmp_path / "fam.json"
    assert cli.main(["eval", "--model", FAMILY, "--dataset_name", str(work / "images"), "--output", str(out),
                     "--no_progress"]) == 0
    report = json.loads(out.read_text())
    assert report["lambdas"] == list(MEMBERS) and report["members"] == list(MEMBERS)
    assert report["family-lambdas"] == list(MEMBERS) and report["weights"] == "published"
    rows = report["per-image"]
    assert len(rows) == 2 * len(MEMBERS)
    sizes = {}
    for row in rows:
        data = member(row["lmb"]).compress(load_image(work / "images" / row["image"]), lmb=row["lmb"])
        assert row["bytes"] == len(data)  # the member of that λ made the point's file
        sizes[row["image"], row["lmb"]] = len(data)
    assert len({sizes["a.png", lmb] for lmb in MEMBERS}) > 1  # three networks, not one
    assert "member λ" in capsys.readouterr().out

    # --lmb-range chooses members; --steps does not apply; a range with no member lists them
    out2 = tmp_path / "part.json"
    assert cli.main(["eval", "--model", FAMILY, "--dataset_name", str(work / "images"), "--lmb_range", "30", "300",
                     "--output", str(out2), "--no_progress"]) == 0
    assert json.loads(out2.read_text())["members"] == [64.0, 256.0]
    assert cli.main(["eval", "--model", FAMILY, "--dataset_name", str(work / "images"), "--steps", "4",
                     "--output", str(tmp_path / "x.json"), "--no_progress"]) == 1
    assert "fixed-λ model" in capsys.readouterr().err
    assert cli.main(["eval", "--model", FAMILY, "--dataset_name", str(work / "images"), "--lmb_range", "20", "40",
                     "--output", str(tmp_path / "x.json"), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its members are λ ∈ {16, 64, 256}" in err
    assert not (tmp_path / "x.json").exists()


def test_one_network_alone_gives_one_rate_point(work, tmp_path, monkeypatch, capsys):
    """qres_tiny with random weights is one network: one point (said on stderr), no "rate points
    repeat" failure, and the BD-rate against the data set's anchor is not computed, with the reason."""
    shutil.copytree(work / "images", tmp_path / "data" / "kodak")
    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path / "data"))
    out = tmp_path / "one.json"
    assert cli.main(["eval", "--model", "qres_tiny", "--weights", "random", "--dataset_name", "kodak",
                     "--output", str(out), "--no_progress"]) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["lambdas"] == [64.0] and report["members"] == [64.0] and len(report["results"]["bpp"]) == 1
    assert "one network, trained at λ=64: the result is one rate point" in captured.err
    assert report["bd-rate"]["percent"] is None and "has 1 rate point" in report["bd-rate"]["note"]
    assert "BD-rate vs vtm18.0: not computed: the test curve (qres_tiny) has 1 rate point" in captured.out


def test_rate_points_is_the_one_rule():
    from lvae.eval.lambdas import rate_points

    class Variable:
        lmb_range, lambdas = (16.0, 2048.0), None

    class Fixed:
        lmb_range, lambdas, name = (64.0, 64.0), (16.0, 64.0, 256.0), "fam"

    assert rate_points(Variable(), steps=3) == pytest.approx([16.0, 181.019336, 2048.0])
    assert rate_points(Fixed()) == [16.0, 64.0, 256.0]
    assert rate_points(Fixed(), (64, 256)) == [64.0, 256.0]
    with pytest.raises(ValueError, match="outside the model's range"):
        rate_points(Variable(), (1, 100))


# -- anchors: the published qres34m curves ----------------------------------------------------------
@pytest.mark.parametrize("test_set, expected", [("kodak", -4.09), ("tecnick-rgb-1200", -4.32),
                                                ("clic2022-test", -3.47)])
def test_published_qres34m_curves_ship_and_compare(test_set, expected, capsys):
    qres = anchors.load_anchor(test_set, "qres34m")
    vtm = anchors.load_anchor(test_set, "vtm18.0")["results"]
    assert qres["lambdas"] == [16, 32, 64, 128, 256, 512, 1024, 2048]
    value = bd_rate(vtm["bpp"], vtm["psnr"], qres["results"]["bpp"], qres["results"]["psnr"])
    assert value == pytest.approx(expected, abs=0.005)
    assert cli.main(["bdrate", f"{test_set}/qres34m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "BD-rate of qres34m (published) (PSNR RGB):"
    assert lines[2].split()[:3] == ["vtm18.0", "(published)", f"{value:+.2f}%"]
    assert lines[3].split()[0] == "qarv_base" and len(lines) == 4
    labels = [t.get_text() for t in rd_figure([{**qres, "name": "mine"}]).axes[0].get_legend().get_texts()]
    assert "qres34m (published)" in labels and "vtm18.0 (published)" in labels


def test_bdrate_names_shipped_curves_and_reports_unknown_ones(tmp_path, capsys):
    assert cli.main(["bdrate", "kodak/qres34m", "kodak/vtm18.0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert cli.main(["bdrate", "kodak/qres99m"]) == 1
    err = capsys.readouterr().err
    assert "no such result file: kodak/qres99m" in err and "kodak/qres34m" in err
    one = {"name": "one", "test-set": "kodak", "results": {"bpp": [0.5], "psnr": [33.0]}}
    (tmp_path / "one.json").write_text(json.dumps(one))
    assert cli.main(["bdrate", str(tmp_path / "one.json")]) == 1
    assert "the test curve (one) has 1 rate point; a BD-rate needs at least 4" in capsys.readouterr().err


# -- the coding commands -----------------------------------------------------------------------------
def test_compress_a_member_and_decompress_with_no_model_flags(work, hub, tmp_path, capsys, monkeypatch):
    src = work / "images" / "a.png"
    out = tmp_path / "a.lvae"
    assert cli.main(["compress", str(src), "-o", str(out), "--model", FAMILY, "--lmb", "256"]) == 0
    assert ", tiny_family, lmb 256, 64x48" in capsys.readouterr().out
    data = out.read_bytes()
    header = read_header(data)
    assert (header.model_name, header.lmb) == (FAMILY, 256.0)
    assert data == member(256).compress(load_image(src), lmb=256)

    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model:    tiny_family\n" in text and "member:   λ=256 of tiny_family (λ ∈ {16, 64, 256})" in text

    # Decoding loads the member the file names, and no other: a hub with its weights alone does.
    alone = tmp_path / "th" / "hub" / "checkpoints"
    alone.mkdir(parents=True)
    shutil.copy(hub / f"{FAMILY}-lmb256.pt", alone)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cli.main(["decompress", str(out), "-o", str(tmp_path / "a.png")]) == 0
    expected = member(256).decompress(data)
    assert torch.equal(load_image(tmp_path / "a.png"), torch.round(expected.clamp(0, 1) * 255) / 255)
    assert cli.main(["decompress", str(out), "-o", str(tmp_path / "b.png"), "--lmb", "16"]) == 1
    assert "coded at λ=256, not at --lmb 16" in capsys.readouterr().err


def test_a_lambda_outside_the_family_is_a_usage_error(work, hub, tmp_path, capsys):
    src = work / "images" / "a.png"
    status = exit_status(cli.main, "compress", src, "-o", tmp_path / "a.lvae", "--model", FAMILY, "--lmb", "100")
    assert status == 2 and not (tmp_path / "a.lvae").exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "λ ∈ {16, 64, 256}, not λ=100" in err[0]


def test_rate_targets_pass_through_to_the_family(work, hub, tmp_path, capsys):
    src = work / "images" / "a.png"
    im = load_image(src)
    api = member(64).compress_with_result(im, target_bytes=10**6)[1]
    assert api.lmb == 256  # every member fits: the highest
    budget = len(member(16).compress(im, lmb=16))
    out = tmp_path / "b.lvae"
    assert cli.main(["compress", str(src), "-o", str(out), "--model", FAMILY, "--bytes", str(budget)]) == 0
    chosen = read_header(out.read_bytes()).lmb
    assert chosen in MEMBERS and out.stat().st_size <= budget
    assert out.read_bytes() == member(64).compress(im, target_bytes=budget)
    assert cli.main(["compress", str(src), "-o", str(tmp_path / "c.lvae"), "--model", FAMILY,
                     "--bytes", str(min(len(member(v).compress(im, lmb=v)) for v in MEMBERS) - 1)]) == 1
    assert "impossible target" in capsys.readouterr().err


def test_models_counts_the_members_weights(hub, capsys):
    assert cli.main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(FAMILY + " "))
    assert row.split()[1:4] == ["3", "of", "3"] and "λ ∈ {16, 64, 256}" in row
    hidden = hub / f"{FAMILY}-lmb16.pt"
    hidden.rename(hub / "moved.pt")
    try:
        assert cli.main(["models"]) == 0
    finally:
        (hub / "moved.pt").rename(hidden)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(FAMILY + " "))
    assert row.split()[1:4] == ["2", "of", "3"] and "λ 64, 256 in" in row


def test_the_authors_pickles_need_model_and_lambda(work, hub, tmp_path, capsys):
    """The QRes-VAE authors' files record neither model nor λ: --model and --lmb say them."""
    m = member(64)
    data = m.compress(load_image(work / "images" / "a.png"), lmb=64)
    header, strings = parse(data)
    top = (1, m.config.dec_widths[0], 1, 1)  # the top feature of a 48×64 image (one 64-pixel cell)
    pickled = tmp_path / "a.bits"
    pickled.write_bytes(pack_qres_legacy(strings, top, header.height, header.width))
    assert cli.main(["info", str(pickled)]) == 0
    assert "model:    not recorded" in capsys.readouterr().out
    assert cli.main(["decompress", str(pickled), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "records neither model nor λ: give --model" in err[0]
    assert cli.main(["decompress", str(pickled), "-o", str(tmp_path / "x.png"), "--model", FAMILY]) == 1
    assert "give --lmb, the member of tiny_family that made it (λ ∈ {16, 64, 256})" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert cli.main(["decompress", str(pickled), "-o", str(tmp_path / "x.png"), "--model", FAMILY,
                     "--lmb", "64"]) == 0
    assert torch.equal(load_image(tmp_path / "x.png"), torch.round(m.decompress(data).clamp(0, 1) * 255) / 255)


def test_the_authors_layout_is_refused_for_models_without_one(work, tmp_path, capsys):
    status = exit_status(cli.main, "compress", work / "images" / "a.png", "-o", tmp_path / "a.bits",
                         "--model", FAMILY, "--format", "legacy")
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1 and not (tmp_path / "a.bits").exists()
    assert "authors' layout of qarv_base, qres34m, qres17m, qres34m_lossless only" in err[0]
    assert "not of tiny_family" in err[0]
