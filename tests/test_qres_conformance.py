"""QRes-VAE (qres34m, qres17m) is the published family: layout, computations and files match the
authors' reference outputs on the fixed weights (tests/data/families/, docs/testing.md)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lvae
from lvae.errors import BitstreamError, CheckpointError, WeightsUnavailableError
from lvae.models import registry
from lvae.models.fixed_weights import fixed_reference_state_dict, load_fixed_reference_weights

from conftest import load_image_tensor

FAMILIES = Path(__file__).parent / "data" / "families"
MODELS = {"qres34m": 34_036_602, "qres17m": 16_678_842}
FIXTURE_LMB = 64  # the reference outputs were made with λ = 64 (λ does not change the network)


@pytest.fixture(scope="module")
def family_input():
    return load_image_tensor(FAMILIES / "families_input.png")


@pytest.fixture(scope="module", params=sorted(MODELS))
def fixed(request):
    """(name, the member λ=64 with the fixed reference weights in eval mode, its reference npz)."""
    torch.manual_seed(0)
    model = load_fixed_reference_weights(lvae.get_model(request.param, lmb=FIXTURE_LMB)).eval()
    return request.param, model, np.load(FAMILIES / f"{request.param}.npz")


def _reference_strings(npz) -> list[bytes]:
    data, out, pos = npz["strings"].tobytes(), [], 0
    for n in npz["string_lengths"]:
        out.append(data[pos : pos + int(n)])
        pos += int(n)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_layout_matches_published(name):
    sd = lvae.get_model(name).state_dict()
    ref = json.loads((FAMILIES / f"{name}_state_dict.json").read_text())
    assert [k for k, _ in ref["keys"]] == list(sd)
    for key, shape in ref["keys"]:
        assert list(sd[key].shape) == shape, key
    assert sum(v.numel() for k, v in sd.items() if "discrete_gaussian" not in k) == ref["num_params"] == MODELS[name]


def test_eval_forward_matches_reference(fixed, family_input):
    name, model, npz = fixed
    with torch.no_grad():
        out = model(family_input)
    np.testing.assert_allclose(out["x_hat"].numpy(), npz["x_hat"], rtol=0, atol=1e-4)
    assert out["kl"].shape == (1, 12)
    np.testing.assert_allclose(out["kl"][0].double().numpy(), npz["kl"], rtol=1e-4, atol=0)
    stats = json.loads((FAMILIES / "families.json").read_text())["models"][name]["forward"]
    assert out["loss"].item() == pytest.approx(stats["loss"], rel=1e-4)
    assert out["bpp"].item() == pytest.approx(stats["bppix"], rel=1e-4)
    assert out["psnr"].item() == pytest.approx(stats["psnr"], rel=1e-4)


def test_latent_strings_are_the_authors_bytes_and_decode_to_their_image(fixed, family_input):
    _, model, npz = fixed
    strings, grid = model.compress_latents(family_input)
    assert grid == (2, 3)
    assert [s for (s,) in strings] == _reference_strings(npz)
    decoded = model.postprocess(model.decompress_latents(strings, None, grid))
    np.testing.assert_allclose(decoded.numpy(), npz["decoded"], rtol=0, atol=1e-5)


def test_the_authors_pickled_files_decode_without_unpickling(fixed, monkeypatch):
    name, model, npz = fixed
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle.loads must never run on a coded file")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    decoded = model.decompress_file(FAMILIES / f"legacy_{name}.pkl")
    assert decoded.shape == (1, 3, 100, 150)
    np.testing.assert_allclose(decoded.numpy(), npz["legacy_decoded"], rtol=0, atol=1e-5)


def test_format_legacy_writes_the_authors_bytes(fixed):
    name, model, _ = fixed
    odd = load_image_tensor(FAMILIES / "families_odd.png")
    assert model.compress(odd, format="legacy") == (FAMILIES / f"legacy_{name}.pkl").read_bytes()


def test_lvae_files_of_a_member_record_model_and_lambda_and_decode_alike(fixed):
    name, model, npz = fixed
    odd = load_image_tensor(FAMILIES / "families_odd.png")
    data = model.compress(odd)
    header = lvae.bitstream.read_header(data)
    assert (header.model_name, header.lmb, header.num_latents) == (name, FIXTURE_LMB, 12)
    np.testing.assert_allclose(model.decompress(data).numpy(), npz["legacy_decoded"], rtol=0, atol=1e-5)


def test_a_qarv_model_refuses_a_qres_pickle():
    model = lvae.get_model("qarv_tiny").eval()
    with pytest.raises(BitstreamError, match="QRes-VAE authors' layout"):
        model.decompress((FAMILIES / "legacy_qres34m.pkl").read_bytes())


def test_a_member_codes_only_at_its_own_lambda(fixed, family_input):
    _, model, _ = fixed
    assert model.lmb_range == (FIXTURE_LMB, FIXTURE_LMB) and model.lambdas == (FIXTURE_LMB,)
    with pytest.raises(ValueError, match="λ ∈ \\{64\\}, not λ=512"):
        model.compress(family_input, lmb=512)
    with pytest.raises(ValueError, match="member"):
        model(family_input, lmb=512)


def test_published_lambda_sets_and_weights():
    assert registry.model_lambdas("qres34m") == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert registry.model_lambdas("qres17m") == (1, 2, 4, 8, 16, 32, 64, 1024)
    assert registry.model_lambdas("qarv_base") is None
    w = registry.model_weights("qres34m", 512)
    assert w.url == "https://huggingface.co/duanzh0/my-model-weights/resolve/main/qres34m/qres34m-lmb512.pt"
    assert registry.model_weights("qres17m", 1024).filename == "qres17m-lmb1024.pt"
    with pytest.raises(ValueError, match=r"λ ∈ \{16, 32, 64, 128, 256, 512, 1024, 2048\}"):
        lvae.get_model("qres34m", lmb=100, pretrained=True)
    with pytest.raises(ValueError, match=r"λ ∈ \{1, 2, 4, 8, 16, 32, 64, 1024\}"):
        registry.model_weights("qres17m", 128)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    folder = tmp_path / "th" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def test_published_member_loads_from_the_hub_cache_strictly(hub):
    model = lvae.get_model("qres17m", lmb=8)
    sd = {**model.state_dict(), **fixed_reference_state_dict(model)}  # a checkpoint holds the coders' buffers too
    torch.save({"model": sd}, hub / "qres17m-lmb8.pt")
    loaded = lvae.get_model("qres17m", lmb=8, pretrained=True)
    assert torch.equal(loaded.state_dict()["decoder.bias"], sd["decoder.bias"])
    assert loaded.lambdas == registry.model_lambdas("qres17m")
    del sd["decoder.bias"]
    torch.save({"model": sd}, hub / "qres17m-lmb8.pt")
    with pytest.raises(CheckpointError, match="decoder.bias"):
        lvae.get_model("qres17m", lmb=8, pretrained=True)


def test_offline_member_says_where_its_weights_go(hub, monkeypatch):
    entry = registry._MODELS["qres17m"]
    offline = registry._Entry(entry.fn, lambda lmb: lvae.models.Weights(
        filename=f"qres17m-lmb{lmb:g}.pt", url=f"http://127.0.0.1:9/qres17m-lmb{lmb:g}.pt"), entry.lambdas)
    monkeypatch.setitem(registry._MODELS, "qres17m", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        lvae.get_model("qres17m", lmb=32, pretrained=True)
    assert str(hub / "qres17m-lmb32.pt") in str(info.value)


def test_the_command_line_knows_every_model_with_an_authors_layout():
    """`lvae compress --format legacy` is checked before torch loads, from the CLI's own list: it
    must be the models' own (their ``legacy_layout_models``)."""
    from lvae.cli.coding import AUTHORS_LAYOUT_MODELS
    from lvae.models import QARV, QResVAE

    assert set(AUTHORS_LAYOUT_MODELS) == set(QARV.legacy_layout_models) | set(QResVAE.legacy_layout_models)
