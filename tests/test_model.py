"""Registry, λ handling, training mode, sampling: behaviour of the model API."""
import pytest
import torch

import lvae
from lvae.models import QARV, QARVConfig


def test_registry_lists_models():
    names = lvae.list_models()
    assert "qarv_base" in names and "qarv_tiny" in names
    assert names == sorted(names)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*qarv_base"):
        lvae.get_model("nope")


def test_register_model_rejects_duplicate_name():
    def qarv_base():
        return None

    with pytest.raises(ValueError, match="already registered"):
        lvae.register_model(qarv_base)


def test_tiny_model_size():
    model = lvae.get_model("qarv_tiny")
    n = sum(p.numel() for p in model.parameters())
    assert n == 365_188  # the README's table
    assert len(model.latent_blocks) == 4
    assert model.name == "qarv_tiny"


def test_config_overrides_and_validation():
    model = lvae.get_model("qarv_tiny", dec_final_depth=2)
    assert model.config.dec_final_depth == 2
    with pytest.raises(ValueError, match="five encoder stages"):
        QARV(QARVConfig(enc_widths=(8, 8)))
    with pytest.raises(TypeError):
        lvae.get_model("qarv_tiny", no_such_arg=1)


def test_training_step_gives_gradient_to_every_parameter(tiny):
    tiny.train()
    im = torch.rand(2, 3, 64, 128)
    out = tiny(im)  # λ drawn per image
    assert out["lmb"].shape == (2,)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    # NOTE: at initialisation `bias` is zero, so the first depthwise conv sees a zero input and
    # its weight gradient is exactly zero; every other tensor must get a non-zero gradient.
    zero = [n for n, p in tiny.named_parameters() if p.grad.abs().sum() == 0]
    assert zero in ([], ["dec_blocks.0.resnet_front.conv_dw.weight"])
    for key in ("loss", "bpp", "mse", "psnr"):
        assert out[key].dim() == 0


def test_sampled_lambdas_cover_range_in_cube_root_space(tiny):
    torch.manual_seed(0)
    lmb = tiny.sample_lmb(20000)
    assert lmb.min() >= 16 and lmb.max() <= 2048
    u = (lmb ** (1 / 3) - 16 ** (1 / 3)) / (2048 ** (1 / 3) - 16 ** (1 / 3))
    assert abs(u.mean().item() - 0.5) < 0.01  # uniform in cube-root space
    assert lmb.median().item() == pytest.approx(((16 ** (1 / 3) + 2048 ** (1 / 3)) / 2) ** 3, rel=0.03)


@pytest.mark.parametrize("bad", [0.0, 15.9, 2049, float("nan"), -1])
def test_lambda_outside_range_is_refused(tiny, bad):
    with pytest.raises(ValueError, match="outside this model's range"):
        tiny(torch.rand(1, 3, 64, 64), lmb=bad)


def test_lambda_range_ends_accepted(tiny):
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, 64, 64), lmb=[16, 2048])
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_image_shapes_are_refused(tiny, shape):
    with pytest.raises(ValueError):
        tiny(torch.rand(*shape), lmb=100)


def test_eval_rate_is_deterministic_and_bpp_consistent(tiny):
    tiny.eval()
    im = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = tiny(im, lmb=100)
        b = tiny(im, lmb=100)
    assert torch.equal(a["x_hat"], b["x_hat"])
    bpp = a["kl"].sum() / (64 * 64) / torch.log(torch.tensor(2.0))
    assert a["bpp"].item() == pytest.approx(bpp.item(), rel=1e-5)


def test_sample_shape_and_range(tiny):
    torch.manual_seed(0)
    x = tiny.sample(2, lmb=64, temperature=0.5, latent_hw=(1, 2))
    assert x.shape == (2, 3, 64, 128)
    assert x.min() >= 0 and x.max() <= 1


def test_default_lmb_is_mid_range(tiny):
    lo, hi = tiny.lmb_range
    assert lo < tiny.default_lmb < hi
    assert tiny.default_lmb == pytest.approx((lo * hi) ** 0.5)


def test_coding_needs_no_table_building(tiny):
    """The CDF tables are package constants: a fresh model codes without compress_mode()."""
    tiny.eval()
    assert not tiny.latent_blocks[0].discrete_gaussian.ready
    im = torch.rand(1, 3, 64, 64)
    strings, grid = tiny.compress_latents(im, 100)
    x_hat = tiny.decompress_latents(strings, 100, grid)
    with torch.no_grad():
        assert torch.equal(x_hat, tiny(im, lmb=100)["x_hat"])
    tiny.compress_mode(True)  # fills the state-dict buffers with the same tables
    from lvae.coding.gaussian import gaussian_tables

    assert torch.equal(tiny.latent_blocks[0].discrete_gaussian._quantized_cdf, gaussian_tables().quantized_cdf)


def test_tiny_latent_round_trip_equals_eval_reconstruction(tiny):
    tiny.eval().compress_mode(True)
    im = torch.rand(1, 3, 128, 64)
    strings, grid = tiny.compress_latents(im, 300)
    x_hat = tiny.decompress_latents(strings, 300, grid)
    with torch.no_grad():
        ref = tiny(im, lmb=300)["x_hat"]
    assert torch.equal(x_hat, ref)


def test_parse_model_args():
    from lvae.utils.args import parse_model_args

    assert parse_model_args(None) == {}
    assert parse_model_args("{'embed_dim': 64}") == {"embed_dim": 64}
    assert parse_model_args("embed_dim=64, enc_depths=(1, 1, 1, 1, 1)") == {
        "embed_dim": 64,
        "enc_depths": (1, 1, 1, 1, 1),
    }
    for bad in ("__import__('os').system('true')", "{1: 2}", "x=open('f')", "embed_dim"):
        with pytest.raises(ValueError, match="cannot parse model arguments"):
            parse_model_args(bad)


def test_broken_weights_fail_cleanly_instead_of_hanging(tiny):
    """NaN latents would send CompressAI's range coder into an endless loop: refuse them."""
    with torch.no_grad():
        tiny.bias.fill_(float("nan"))
    tiny.eval().compress_mode(True)
    with pytest.raises(ValueError, match="not finite"):
        tiny.compress_latents(torch.rand(1, 3, 64, 64), 100)
