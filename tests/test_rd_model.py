"""The R(D) upper-bound model (rd_model_base, ICIP 2023): the authors' layout and noise-free outputs
on the fixed weights (tests/data/families/, docs/testing.md); it refuses to code; its bound is
measured (rate from the KL, distortion from seeded posterior samples), marked as a bound in the
JSON and the plot, and compared with codecs by ``lvae bdrate``."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lvae
from lvae import cli
from lvae.cli import bdrate, evaluate
from lvae.eval import anchors
from lvae.eval.bound import gap_to_bound, measure_image
from lvae.eval.lambdas import lambda_sweep
from lvae.eval.plot import rd_figure
from lvae.models.fixed_weights import load_fixed_reference_weights

from conftest import DATA, exit_status, load_image_tensor

FAMILIES = Path(__file__).parent / "data" / "families"
NUM_PARAMS = 186_670_384
FIXTURE_LAMBDAS = (4, 64, 2048)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_jobs(request):
    """The tiny model's jobs run on one thread (threads only slow them on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    if "base" not in request.fixturenames:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base():
    """rd_model_base with the fixed reference weights, in eval mode (one instance: 187 M parameters)."""
    return load_fixed_reference_weights(lvae.get_model("rd_model_base")).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """rd_model_tiny's fixed weights as a checkpoint file, so that every process builds the same model."""
    path = tmp_path_factory.mktemp("rd") / "rd_model_tiny.pt"
    torch.save({"model": load_fixed_reference_weights(lvae.get_model("rd_model_tiny")).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """A folder of two images, one of a size that is no multiple of 64 (150×100: padded to 192×128)."""
    folder = tmp_path_factory.mktemp("rd") / "two"
    folder.mkdir()
    for name in ("families_input.png", "families_odd.png"):
        shutil.copy(FAMILIES / name, folder / name)
    return folder


def test_state_dict_layout_matches_published(base):
    sd = base.state_dict()
    ref = json.loads((FAMILIES / "rd_model_base_state_dict.json").read_text())
    assert [k for k, _ in ref["keys"]] == list(sd)
    for key, shape in ref["keys"]:
        assert list(sd[key].shape) == shape, key
    assert sum(v.numel() for v in sd.values()) == ref["num_params"] == NUM_PARAMS
    assert len(base.latent_blocks) == 15 and base.lmb_range == (4.0, 2048.0) and base.max_stride == 64


@pytest.mark.parametrize("lmb", FIXTURE_LAMBDAS)
def test_noise_free_forward_matches_reference(base, lmb):
    """Every latent at its posterior mean (the authors' forward_end2end with zero noise)."""
    npz = np.load(FAMILIES / "rd_model_base.npz")
    im = load_image_tensor(FAMILIES / "families_input.png")
    with torch.no_grad():
        out = base(im, lmb, posterior="mean")
    np.testing.assert_allclose(out["x_hat"].numpy(), npz[f"lmb{lmb}_x_hat"], rtol=0, atol=1e-4)
    assert out["kl"].shape == (1, 15)
    np.testing.assert_allclose(out["kl"][0].double().numpy(), npz[f"lmb{lmb}_kl"], rtol=1e-4, atol=0)
    stats = json.loads((FAMILIES / "families.json").read_text())["models"]["rd_model_base"][f"lmb{lmb}"]
    assert out["x_hat"].mean().item() == pytest.approx(stats["x_hat_mean"], rel=1e-3)
    # the rate of the bound is the KL itself: bits per pixel, no coding
    assert out["bpp"].item() == pytest.approx(npz[f"lmb{lmb}_kl"].sum() * math.log2(math.e) / (128 * 192), rel=1e-5)


def test_posterior_samples_are_seeded_and_differ_from_the_mean():
    model = load_fixed_reference_weights(lvae.get_model("rd_model_tiny")).eval()
    im = load_image_tensor(FAMILIES / "families_input.png")

    def run(posterior, seed=None):
        g = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return model(im, 64, posterior=posterior, generator=g)

    a, b, c, mean = run("sample", 1), run("sample", 1), run("sample", 2), run("mean")
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.equal(a["kl"], b["kl"])
    assert not torch.equal(a["x_hat"], c["x_hat"]) and not torch.equal(a["x_hat"], mean["x_hat"])
    # the top block's KL does not depend on any sample; the deeper ones are taken at the sampled latents
    assert torch.equal(a["kl"][:, 0], mean["kl"][:, 0]) and not torch.equal(a["kl"][:, 1:], mean["kl"][:, 1:])
    with pytest.raises(ValueError, match="posterior must be one of sample, mean"):
        model(im, 64, posterior="mode")
    with pytest.raises(ValueError, match="outside this model's range"):
        model(im, 3.0)


def test_the_bound_is_the_kl_over_the_true_pixels_and_the_sampled_mse():
    """measure_image on a 150×100 image: padded to 192×128 for the network, but the rate is the KL
    over the image's own 15,000 pixels and the MSE is of the decoded samples cropped to it."""
    model = load_fixed_reference_weights(lvae.get_model("rd_model_tiny")).eval()
    im = load_image_tensor(FAMILIES / "families_odd.png")
    assert im.shape[2:] == (100, 150)
    got = measure_image(model, im, 100.0, samples=3, seed=5)
    padded = torch.nn.functional.pad(im, (0, 42, 0, 28), mode="replicate")
    g = torch.Generator().manual_seed(5)
    nats, err = 0.0, 0.0
    with torch.no_grad():
        for _ in range(3):
            out = model(padded, 100.0, posterior="sample", generator=g)
            nats += out["kl"].double().sum().item()
            err += (model.postprocess(out["x_hat"])[:, :, :100, :150].double() - im.double()).pow(2).mean().item()
    assert got["bpp"] == pytest.approx(nats / 3 * math.log2(math.e) / 15_000, rel=1e-9)
    assert got["mse"] == pytest.approx(err / 3, rel=1e-9)
    assert got["psnr"] == pytest.approx(-10 * math.log10(err / 3), rel=1e-9)


def test_it_is_not_a_codec(tmp_path, capsys, monkeypatch):
    model = lvae.get_model("rd_model_tiny")
    im = torch.rand(1, 3, 64, 64)
    for call in (lambda: model.compress(im), lambda: model.compress_file("a.png", "a.lvae"),
                 lambda: model.decompress(b"x"), lambda: model.decompress_file("a.lvae")):
        with pytest.raises(ValueError, match="rd_model_tiny measures an upper bound on the rate–distortion function"):
            call()
    # the command line refuses before building the model: one line, usage status
    from lvae.models import registry

    monkeypatch.setattr(registry, "get_model", lambda *a, **k: pytest.fail("the model was built"))
    src = tmp_path / "in.png"
    shutil.copy(FAMILIES / "families_odd.png", src)
    assert cli.main(["compress", str(src), "--model", "rd_model_base"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rd_model_base measures an upper bound" in err and "not a codec" in err
    assert list(tmp_path.iterdir()) == [src]


def test_eval_measures_the_bound_seeded_over_the_lambda_range(tiny_checkpoint, two_images, tmp_path, capsys):
    out = tmp_path / "bound.json"
    argv = ["--model", "rd_model_tiny", "--weights", str(tiny_checkpoint), "--dataset-name", str(two_images),
            "--steps", "4", "--samples", "2", "--seed", "3", "--no-progress"]
    assert evaluate.main([*argv, "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "upper bound on R(D) on two (2 images, 2 posterior samples per image and λ, seed 3" in table
    report = json.loads(out.read_text())
    assert report["kind"] == "bound" and report["samples"] == 2 and report["seed"] == 3
    assert report["lambdas"] == lambda_sweep(4.0, 2048.0, 4)
    assert len(report["per-image"]) == 8 and len(report["results"]["bpp"]) == 4
    # each point is the measurement of measure_image, image by image
    model = lvae.get_model("rd_model_tiny", pretrained=str(tiny_checkpoint)).eval()
    im = load_image_tensor(two_images / "families_odd.png")
    row = next(r for r in report["per-image"] if r["image"] == "families_odd.png" and r["lmb"] == 2048.0)
    assert row["bpp"] == pytest.approx(measure_image(model, im, 2048.0, samples=2, seed=3)["bpp"], rel=1e-6)
    assert report["results"]["psnr"][-1] == pytest.approx(
        np.mean([r["psnr"] for r in report["per-image"] if r["lmb"] == 2048.0]), rel=1e-12)
    # seeded: the same command gives the same numbers
    again = tmp_path / "again.json"
    assert evaluate.main([*argv, "--output", str(again)]) == 0
    assert json.loads(again.read_text())["results"] == report["results"]


def test_eval_flags_of_coding_and_sampling_go_to_the_right_models(two_images, tmp_path, capsys):
    base = ["--dataset-name", str(two_images), "--weights", "random", "--no-progress", "--output",
            str(tmp_path / "x.json")]
    assert evaluate.main(["--model", "qarv_tiny", "--samples", "2", *base]) == 1
    assert "--samples applies to an R(D) model" in capsys.readouterr().err
    assert evaluate.main(["--model", "rd_model_tiny", "--progressive", *base]) == 1
    assert "--progressive applies to a codec; rd_model_tiny measures an upper bound" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _curve(name, bpp, psnr, test_set="kodak", kind=None):
    curve = {"name": name, "test-set": test_set, "results": {"bpp": list(bpp), "psnr": list(psnr)}}
    if kind:
        curve["kind"] = kind
    return curve


def test_bdrate_says_how_far_a_codec_is_above_the_bound(tmp_path, capsys):
    vtm = anchors.load_anchor("kodak", "vtm18.0")
    bpp, psnr = vtm["results"]["bpp"], vtm["results"]["psnr"]
    bound = _curve("rd_model_base", [0.7 * b for b in bpp], psnr, kind="bound")  # 30 % fewer bits than VTM
    codec = _curve("my_codec", [0.7 * 1.25 * b for b in bpp], psnr)  # 25 % more bits than the bound
    (tmp_path / "bound.json").write_text(json.dumps(bound))
    (tmp_path / "codec.json").write_text(json.dumps(codec))
    assert gap_to_bound(codec, bound) == pytest.approx(25.0, abs=1e-6)

    assert bdrate.main([str(tmp_path / "codec.json"), str(tmp_path / "bound.json")]) == 0
    out = capsys.readouterr().out
    assert "R(D) upper bound (rd_model_base)" in out and "this codec is 25.0 % above the bound" in out
    # the bound against every shipped Kodak curve: VTM 18.0 first, each codec's distance to the bound
    assert bdrate.main([str(tmp_path / "bound.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    vtm_line = next(line for line in lines if line.startswith("vtm18.0 (published)"))
    assert "-30.00%" in vtm_line and "vtm18.0 (published) is 42.9 % above the bound" in vtm_line
    assert any(line.startswith("qarv_base (published)") and "above the bound" in line for line in lines)


def test_the_plot_draws_the_bound_dashed_and_labelled():
    vtm = anchors.load_anchor("kodak", "vtm18.0")
    bound = _curve("rd_model_base", [0.7 * b for b in vtm["results"]["bpp"]], vtm["results"]["psnr"], kind="bound")
    codec = _curve("my_codec", vtm["results"]["bpp"], [p - 0.1 for p in vtm["results"]["psnr"]])
    ax = rd_figure([bound, codec], with_anchors=False).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["R(D) upper bound (rd_model_base)"].get_linestyle() == "--"
    assert lines["my_codec"].get_linestyle() == "-"


def test_training_refuses_the_bound_model_in_one_line(tmp_path, capsys):
    from lvae.training import main

    status = exit_status(main, "--model", "rd_model_tiny", "--trainset", DATA / "train_small", "--valset", "none",
                         "--device", "cpu", "--runs_dir", tmp_path / "runs", "--workers", "0", "--batch_size", "2",
                         "--transform", "crop=64")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 1 and "trains codecs" in err[0]
    assert not (tmp_path / "runs").exists()
