"""A model family that lvae has never seen plugs in with no change to lvae (issue 23).

This file defines a toy fixed-λ family — its own network (2,325 parameters, stride 8, one latent
block), three members λ ∈ {4, 16, 64} with weights of their own in the torch hub cache — registers
it through the public ``lvae.register_model``, and then uses only public entry points: it
compresses at every member and at rate targets, decodes in another process with another thread
count, evaluates the family into one R–D curve (``eval-var-rate.py``'s main) and trains a member
for a few steps (``train-var-rate.py``'s main).

The toy's weights make it a real (if crude) codec: member λ codes each 8×8 block's mean colour,
scaled by √λ, so a larger λ spends more bits for a better image.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import lvae
from lvae.codec import CompressionMixin
from lvae.coding.gaussian import DiscreteGaussian, gaussian_bin_nll
from lvae.coding.latent import CodedLatent, decode_latent, encode_latent
from lvae.models import Weights, registry

from conftest import DATA, exit_status, load_image_tensor

NAME = "toy_family"
LAMBDAS = (4.0, 16.0, 64.0)
TESTS = Path(__file__).resolve().parent
KODAK3 = DATA / "kodak3"
CHANNELS = 6  # latent channels: 3 carry the block means, 3 stay zero


class ToyLatent(nn.Module):
    """The one latent block: a learned Gaussian prior per channel."""

    def __init__(self):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, CHANNELS, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, CHANNELS, 1, 1))
        self.coder = DiscreteGaussian()

    def prior(self, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (n, CHANNELS, h, w)
        return self.mean.expand(shape).contiguous(), torch.exp(self.log_scale).expand(shape).contiguous()


class ToyFamilyMember(CompressionMixin, nn.Module):
    """One member: 8×8 patches → 6 latent channels → 8×8 patches (no other layer)."""

    max_stride = 8

    def __init__(self, lmb: float):
        super().__init__()
        self.name: str | None = None
        self.lmb = float(lmb)
        self.lmb_range = (self.lmb, self.lmb)
        self.default_lmb = self.lmb
        self.enc = nn.Conv2d(3, CHANNELS, 8, stride=8)
        self.dec = nn.ConvTranspose2d(CHANNELS, 3, 8, stride=8)
        self.latent = ToyLatent()

    @property
    def latent_blocks(self) -> list[nn.Module]:
        return [self.latent]

    def lmb_tensor(self, lmb, n: int) -> torch.Tensor:
        value = self.lmb if lmb is None else float(torch.as_tensor(lmb).reshape(-1)[0])
        if abs(value - self.lmb) > 1e-6 * self.lmb:
            raise ValueError(f"this toy network codes at λ={self.lmb:g} only")
        return torch.full((n,), self.lmb)

    @staticmethod
    def postprocess(x_hat: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x_hat, -1, 1) * 0.5 + 0.5

    def forward(self, im: torch.Tensor, lmb=None) -> dict:
        n, _, h, w = im.shape
        lmb_t = self.lmb_tensor(lmb, n)
        target = (im - 0.5) * 2
        z = self.enc(target)
        pm, pv = self.latent.prior(n, *z.shape[2:])
        if self.training:
            z = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            nll = gaussian_bin_nll(z, pm, pv)
        else:
            z, likelihood = self.latent.coder(z, scales=pv, means=pm)
            nll = -torch.log(likelihood)
        x_hat = self.dec(z)
        kl = nll.flatten(1).sum(dim=1, keepdim=True)
        rate = kl[:, 0] / (3 * h * w)
        mse = (x_hat - target).pow(2).flatten(1).mean(dim=1)
        rd = rate + lmb_t * mse
        mse01 = (self.postprocess(x_hat.detach()) - im).pow(2).mean()
        return {"loss": rd.mean(), "rd": rd, "lmb": lmb_t, "bpp": rate.mean() * 3 / math.log(2), "mse": mse.mean(),
                "psnr": -10 * torch.log10(mse01.clamp_min(1e-12)), "kl": kl, "x_hat": x_hat}

    @torch.no_grad()
    def reconstruct(self, im: torch.Tensor, lmb=None) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self.postprocess(self(im, lmb)["x_hat"])
        finally:
            self.train(was)

    @torch.no_grad()
    def encode_latents(self, im: torch.Tensor, lmb):
        n, _, h, w = im.shape
        self.lmb_tensor(lmb, n)
        z = self.enc((im - 0.5) * 2)
        pm, pv = self.latent.prior(n, *z.shape[2:])
        _, coded = encode_latent(z, pm, pv)
        return [coded], (h // 8, w // 8)

    @torch.no_grad()
    def decompress_latents(self, strings, lmb, latent_hw, batch: int = 1) -> torch.Tensor:
        n = len(strings[0]) if strings else batch
        pm, pv = self.latent.prior(n, *latent_hw)
        if strings:
            coded = [s if isinstance(s, CodedLatent) else CodedLatent(bytes(s)) for s in strings[0]]
            z = decode_latent(coded, pm, pv)
        else:
            z = pm
        return self.dec(z)


def toy_family(lmb: float = 16.0) -> ToyFamilyMember:
    """The toy family's entry function: the member of ``lmb``."""
    return ToyFamilyMember(lmb)


def member_weights(lmb: float) -> Weights:
    return Weights(filename=f"toy_family-lmb{lmb:g}.pt")


def register() -> None:
    lvae.register_model(lambdas=LAMBDAS, weights=member_weights)(toy_family)


def published_state_dict(lmb: float) -> dict[str, torch.Tensor]:
    """Member λ: each channel's 8×8 block mean times s = √λ, decoded back by 1/s; prior N(0, s/2)."""
    s = math.sqrt(lmb)
    model = ToyFamilyMember(lmb)
    sd = model.state_dict()
    with torch.no_grad():
        for key in ("enc.weight", "enc.bias", "dec.weight", "dec.bias", "latent.mean"):
            sd[key].zero_()
        for c in range(3):
            sd["enc.weight"][c, c] = s / 64
            sd["dec.weight"][c, c] = 1 / s
        sd["latent.log_scale"][:] = math.log(0.11)
        sd["latent.log_scale"][0, :3] = math.log(s / 2)
    return sd


@pytest.fixture()
def family(tmp_path, monkeypatch):
    """The toy family registered for this test, its members' weights in a fresh torch hub cache."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    register()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    for lmb in LAMBDAS:
        torch.save({"model": published_state_dict(lmb)}, cache / member_weights(lmb).filename)
    return tmp_path


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return load_image_tensor(sorted(KODAK3.glob("*.png"))[0])[:, :, :100, :150]  # odd size: padded to 8


def test_every_member_codes_and_a_larger_lambda_spends_more_for_more(family, image):
    model = lvae.get_model(NAME, lmb=4, pretrained=True).eval()
    assert model.lambdas == LAMBDAS and sum(p.numel() for p in model.parameters()) == 2325
    sizes, quality = [], []
    for lmb in LAMBDAS:
        data, result = model.compress_with_result(image, lmb=lmb)
        header = lvae.bitstream.read_header(data)
        assert (header.model_name, header.lmb, result.lmb) == (NAME, lmb, lmb)
        decoded = model.decompress(data)  # the λ=4 member decodes every member's file
        assert decoded.shape == image.shape
        sizes.append(len(data))
        quality.append(result.psnr)
    assert sizes == sorted(sizes) and quality == sorted(quality) and quality[0] > 15
    with pytest.raises(ValueError, match=r"λ ∈ \{4, 16, 64\}, not λ=8"):
        model.compress(image, lmb=8)


def test_rate_targets_choose_the_member(family, image):
    model = lvae.get_model(NAME, lmb=16, pretrained=True).eval()
    files = {lmb: model.compress(image, lmb=lmb) for lmb in LAMBDAS}
    budget = len(files[16.0]) + 1  # fits λ=16's file, not λ=64's
    data, result = model.compress_with_result(image, target_bytes=budget)
    assert result.lmb == 16 and data == files[16.0] and result.encodes <= 2
    with pytest.raises(ValueError, match="impossible target"):
        model.compress(image, target_bytes=len(files[4.0]) - 1)
    goal = model.compress_with_result(image, lmb=16)[1].psnr - 0.01  # reached by λ=16, not by λ=4
    _, result = model.compress_with_result(image, target_psnr=goal)
    assert result.lmb == 16 and result.psnr >= goal


def test_files_decode_in_another_process_with_another_thread_count(family, image):
    model = lvae.get_model(NAME, lmb=64, pretrained=True).eval()
    path = family / "toy.lvae"
    path.write_bytes(model.compress(image, lmb=16))
    expected = model.decompress(path.read_bytes())
    script = (
        "import sys, numpy as np, torch\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import lvae, test_toy_family as toy\n"
        "toy.register()\n"
        "torch.set_num_threads(1)\n"
        f"m = lvae.get_model({NAME!r}, lmb=4, pretrained=True).eval()\n"
        f"np.save({str(family / 'out.npy')!r}, m.decompress_file({str(path)!r}).numpy())\n"
    )
    env = {**os.environ, "TORCH_HOME": str(family / "th"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.abs(np.load(family / "out.npy") - expected.numpy()).max() <= 1e-6


def test_the_family_evaluates_into_one_curve(family):
    from lvae.cli.evaluate import main

    out = family / "toy-kodak3.json"
    assert exit_status(main, "--model", NAME, "--dataset-name", KODAK3, "--output", out, "--no-progress") == 0
    result = json.loads(out.read_text())
    text = json.dumps(result)
    for lmb in LAMBDAS:
        assert f"{lmb:g}" in text
    bpp = next(v for k, v in result["results"].items() if k == "bpp")
    psnr = result["results"]["psnr"]
    assert len(bpp) == len(psnr) == 3 and bpp == sorted(bpp) and psnr == sorted(psnr)


def test_a_member_trains_a_few_steps(family, one_thread):
    from lvae.training import main

    runs = family / "runs"
    args = ["--model", NAME, "--lmb", "16", "--trainset", DATA / "train_small", "--valset", KODAK3,
            "--transform", "crop=64", "--batch_size", "2", "--workers", "0", "--device", "cpu", "--iterations", "3",
            "--val_every", "3", "--runs_dir", runs, "--name", "toy", "--wbmode", "disabled"]
    assert exit_status(main, *args) == 0
    ckpt = torch.load(runs / "toy" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["lmb"] == 16
    trained = ToyFamilyMember(16)
    trained.load_state_dict(ckpt["model"])  # the member's own layout
