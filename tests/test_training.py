"""Unit tests of the training package: config, schedule, spike guard, EMA, data, checkpoints, validation."""
import math
import statistics
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.errors import CheckpointError
from lvae.training.checkpoint import (
    atomic_save,
    find_resume_checkpoint,
    load_training_checkpoint,
    param_checksum,
    rng_state,
    set_rng_state,
)
from lvae.training.config import ConfigError, TrainConfig, merge_for_resume, parse_args
from lvae.training.data import ImageFolderCrops, ResumableDistributedSampler
from lvae.training.distributed import DistContext
from lvae.training.ema import ModelEma
from lvae.training.schedule import SpikeGuard, lr_factor
from lvae.training.trainer import cuda_training_flags, param_groups, training_loss
from lvae.training.validation import anchor_curve, bd_rate_vs_anchor, evaluate, validation_lambdas

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


# -- config --------------------------------------------------------------------------------------
def test_defaults_are_the_authors_recipe():
    cfg, explicit = parse_args([])
    assert explicit == set()
    assert (cfg.trainset, cfg.crop, cfg.hflip, cfg.batch_size, cfg.lr) == ("coco-train2017", 256, True, 32, 2e-4)
    assert (cfg.iterations, cfg.grad_clip, cfg.ema, cfg.ema_decay, cfg.ema_warmup) == (
        2_000_000, 2.0, True, 0.9999, 1e4)
    assert (cfg.lr_sched, cfg.lrf_min, cfg.wdecay) == ("const-0.5-cos", 0.01, 0.0)
    assert (cfg.valset, cfg.val_steps, cfg.val_every) == ("kodak", 8, 2000)
    assert (cfg.wbproject, cfg.wbgroup, cfg.wbmode) == ("default", "var-rate-exp", "disabled")


def test_seed_command_flags_parse():
    cfg, explicit = parse_args(
        "--model qarv_base --batch_size 32 --iterations 2_000_000 --workers 8 --wbmode online".split()
    )
    assert cfg.iterations == 2_000_000 and cfg.workers == 8 and cfg.wbmode == "online"
    assert explicit == {"model", "batch_size", "iterations", "workers", "wbmode"}
    cfg, _ = parse_args(["--model_args", "dec_final_depth=2, embed_dim=32", "--transform", "crop=128,hflip=False"])
    assert cfg.model_args == {"dec_final_depth": 2, "embed_dim": 32}
    assert (cfg.crop, cfg.hflip) == (128, False)
    assert parse_args(["--no-ema"])[0].ema is False


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--batch_size", "0"], "--batch_size"),
        (["--iterations", "many"], "invalid int"),
        (["--nonsense"], "unrecognized"),
        (["--transform", "crop=0"], "positive multiple of the model's stride"),  # the stride itself: once built
        (["--lmb", "-1"], "--lmb must be a positive number"),
        (["--transform", "size=64"], "crop and hflip"),
        (["--model_args", "__import__('os')"], "cannot parse model arguments"),
        (["--lr_sched", "step"], "invalid choice"),
        (["--wbmode", "on"], "invalid choice"),
        (["--ema_decay", "1.5"], "--ema_decay"),
        (["--resume", "a", "--weights", "b.pt"], "exclude each other"),
        (["--max_minutes", "-1"], "--max_minutes"),
        (["--max_minutes", "nan"], "--max_minutes"),
    ],
)
def test_bad_flags_raise_config_error(argv, words):
    with pytest.raises(ConfigError, match=words):
        parse_args(argv)


def test_resume_merge_allows_only_run_control_changes():
    saved = TrainConfig(model="qarv_tiny", lr=1e-3, iterations=100).to_dict()
    cfg, explicit = parse_args(["--resume", "x", "--iterations", "200", "--workers", "0"])
    merged = merge_for_resume(saved, cfg, explicit)
    assert (merged.iterations, merged.workers, merged.lr, merged.model) == (200, 0, 1e-3, "qarv_tiny")
    cfg, explicit = parse_args(["--resume", "x", "--lr", "5e-4"])
    with pytest.raises(ConfigError, match="--lr cannot change"):
        merge_for_resume(saved, cfg, explicit)
    cfg, explicit = parse_args(["--resume", "x", "--lr", "1e-3"])  # the same value is fine
    assert merge_for_resume(saved, cfg, explicit).lr == 1e-3
    cfg, explicit = parse_args(["--resume", "x", "--max_minutes", "2.5"])  # a wall-clock limit per process
    assert merge_for_resume(saved, cfg, explicit).max_minutes == 2.5


def _backend_flags():
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())


def test_cuda_training_flags_are_scoped_to_the_block():
    """TF32 and cuDNN autotuning hold inside the block on CUDA and are restored after it (also
    after an exception); on the CPU nothing changes. Setting the flags needs no GPU."""
    before = _backend_flags()
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        plain = _backend_flags()
        assert plain == (False, False, False, "highest")
        with cuda_training_flags(torch.device("cpu")):
            assert _backend_flags() == plain
        with cuda_training_flags(torch.device("cuda", 0)):
            assert _backend_flags() == (True, True, True, "high")
        assert _backend_flags() == plain
        with pytest.raises(RuntimeError, match="boom"):
            with cuda_training_flags(torch.device("cuda")):
                raise RuntimeError("boom")
        assert _backend_flags() == plain
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.backends.cuda.matmul.allow_tf32 = before[2]
        torch.set_float32_matmul_precision(before[3])


# -- schedule, spike guard, EMA, parameter groups ------------------------------------------------
def test_const_half_cosine_schedule():
    total = 1000
    assert lr_factor("const-0.5-cos", 0, total) == 1.0
    assert lr_factor("const-0.5-cos", 499, total) == 1.0
    assert lr_factor("const-0.5-cos", 500, total) == pytest.approx(1.0)
    assert lr_factor("const-0.5-cos", 750, total) == pytest.approx((1 + 0.01) / 2)
    assert lr_factor("const-0.5-cos", 1000, total) == pytest.approx(0.01)
    factors = [lr_factor("const-0.5-cos", t, total) for t in range(500, 1001)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert lr_factor("cosine", 500, total, lrf_min=0.0) == pytest.approx(0.5)
    assert lr_factor("constant", 999, total) == 1.0
    assert lr_factor("constant", 4, total, warmup=10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor("step", 0, total)


def test_spike_guard_uses_median_of_last_100():
    guard = SpikeGuard(factor=10.0, window=100)
    norms = [1.0 + 0.01 * i for i in range(100)]
    assert not any(guard.check(n) for n in norms)  # judged only once the window is full
    median = statistics.median(norms)
    assert guard.check(10 * median * 1.01) is True
    # The spike entered the window; the median moved by one position only.
    median = statistics.median(list(guard.history))
    assert guard.check(10 * median * 0.99) is False
    assert guard.check(math.inf) is False and len(guard.history) == 100
    g2 = SpikeGuard()
    g2.load_state_dict(guard.state_dict())
    assert list(g2.history) == list(guard.history)
    assert not SpikeGuard().check(1e9)  # empty history: never a spike


def test_schedules_at_their_edges():
    assert lr_factor("cosine", 0, 100, lrf_min=0.1) == 1.0
    assert lr_factor("cosine", 100, 100, lrf_min=0.1) == pytest.approx(0.1)
    assert lr_factor("cosine", 25, 100, lrf_min=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 250, 100, lrf_min=0.1) == pytest.approx(0.1)  # past the end: the end
    assert lr_factor("cosine", -5, 100, lrf_min=0.1) == 1.0  # before the start: the start
    assert lr_factor("const-0.5-cos", 5, 11) == 1.0 and lr_factor("const-0.5-cos", 6, 11) < 1.0  # half = 5.5
    assert lr_factor("const-0.5-cos", 1, 1) == pytest.approx(0.01)
    # last warm-up step: full
    assert lr_factor("cosine", 9, 100, warmup=10) == pytest.approx(lr_factor("cosine", 9, 100))
    assert lr_factor("cosine", 0, 100, warmup=4) == pytest.approx(0.25)
    assert lr_factor("constant", 10, 100, warmup=10) == 1.0
    assert lr_factor("constant", 0, 100, warmup=0) == 1.0
    for total in (0, -3):
        with pytest.raises(ValueError, match=f"^total iterations must be at least 1, got {total}$"):
            lr_factor("constant", 0, total)
    with pytest.raises(ValueError, match=r"^unknown lr schedule 'step' \(known: const-0.5-cos, cosine, constant\)$"):
        lr_factor("step", 0, 10)


def test_spike_guard_defaults_and_non_finite_norms():
    guard = SpikeGuard()
    assert guard.factor == 10.0 and guard.history.maxlen == 100
    small = SpikeGuard(factor=2.0, window=3)
    for n in (1.0, math.nan, 1.0, math.inf, 1.0):
        assert small.check(n) is False
    assert list(small.history) == [1.0, 1.0, 1.0]  # non-finite norms are not recorded
    assert small.check(2.0) is False and small.check(2.01) is True  # strictly above factor × median
    assert small.state_dict() == {"history": [1.0, 2.0, 2.01]}
    small.load_state_dict({"history": [4, 5]})
    assert list(small.history) == [4.0, 5.0] and all(isinstance(v, float) for v in small.history)
    assert small.check(100.0) is False  # the window is not full again yet


def test_ema_decay_schedule_and_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.9999, warmup=10000)
    assert ema.decay_at(10000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - math.exp(-1e-4)))
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=5000)
    d = 0.9999 * (1 - math.exp(-0.5))
    torch.testing.assert_close(ema.module.weight, d * before + (1 - d) * model.weight)
    assert not ema.module.training and not ema.module.weight.requires_grad


def test_param_groups_exempt_biases_and_gains_from_weight_decay():
    model = lvae.get_model("qarv_tiny")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert {"bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert any(names[id(p)].endswith("gamma") for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# -- data ----------------------------------------------------------------------------------------
def _save(path, arr):
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def test_small_images_are_reflect_padded(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 30, 3))
    _save(tmp_path / "small.png", arr)
    ds = ImageFolderCrops(tmp_path, crop=64, hflip=False)
    crop = ds[0]
    assert crop.shape == (3, 64, 64) and crop.dtype == torch.float32
    expected = np.pad(arr, ((0, 44), (0, 34), (0, 0)), mode="reflect")
    torch.testing.assert_close(crop, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_crops_are_random_and_flipped(tmp_path):
    arr = np.tile(np.arange(200)[None, :, None], (100, 1, 3)) % 256  # columns numbered left to right
    _save(tmp_path / "ramp.png", arr)
    ds = ImageFolderCrops(tmp_path, crop=64, hflip=True)
    torch.manual_seed(0)
    firsts, flipped = set(), 0
    for _ in range(40):
        row = (ds[0][0, 0] * 255).round().long()
        step = int(row[1] - row[0])
        flipped += step == -1
        firsts.add(int(row.min()))
    assert 5 < flipped < 35  # about half the crops are mirrored
    assert len(firsts) > 10  # crop positions vary


def test_unreadable_images_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "good.png", np.full((70, 70, 3), 128))  # sub-folders are searched
    (tmp_path / "a_broken.jpg").write_bytes(b"not a jpeg at all")
    ds = ImageFolderCrops(tmp_path, crop=64)
    assert len(ds) == 2 and ds.files[0].name == "a_broken.jpg"
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*a_broken.jpg"):
        crop = ds[0]
    torch.testing.assert_close(crop, torch.full((3, 64, 64), 128 / 255))


def test_empty_training_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no training images"):
        ImageFolderCrops(tmp_path, crop=64)


def test_resumable_sampler_continues_an_epoch_exactly():
    data = list(range(23))
    for rank in (0, 1):
        full = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=3)
        full.set_position(epoch=4, skip=0)
        order = list(full)
        resumed = ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=3)
        resumed.set_position(epoch=4, skip=5)
        assert list(resumed) == order[5:] and len(resumed) == len(order) - 5
    shards = [set(ResumableDistributedSampler(data, 2, r, seed=3)) for r in (0, 1)]
    assert shards[0] | shards[1] == set(data)


# -- checkpoints ---------------------------------------------------------------------------------
def test_atomic_save_and_checkpoint_reading(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_training_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_training_checkpoint(tmp_path / "junk.pt")
    assert find_resume_checkpoint(str(tmp_path), "runs") == path
    assert find_resume_checkpoint(tmp_path.name, tmp_path.parent) == path
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        find_resume_checkpoint("no-such-run", tmp_path)


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(1)
    state = rng_state()
    atomic_save({"rng": [state]}, tmp_path / "r.pt")
    expected = torch.rand(3)
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)["rng"][0]
    set_rng_state(loaded)
    torch.testing.assert_close(torch.rand(3), expected)


def test_param_checksum_sees_any_change():
    model = torch.nn.Linear(4, 4)
    a = param_checksum(model)
    assert param_checksum(model) == a
    with torch.no_grad():
        model.bias[0] = torch.nextafter(model.bias[0], torch.tensor(1.0))
    assert param_checksum(model) != a


# -- validation ----------------------------------------------------------------------------------
def test_validation_lambdas_are_log_spaced():
    lmbs = validation_lambdas((16, 2048), 8)
    assert lmbs[0] == pytest.approx(16) and lmbs[-1] == pytest.approx(2048)
    ratios = [b / a for a, b in zip(lmbs, lmbs[1:])]
    assert all(r == pytest.approx(128 ** (1 / 7)) for r in ratios)


def test_evaluate_counts_bits_per_original_pixel(tiny, one_thread):
    torch.manual_seed(1)
    im = torch.rand(1, 3, 64, 64)
    out = evaluate(tiny, [(im * 255).round().to(torch.uint8)], [16.0, 2048.0], CPU)
    assert tiny.training  # restored
    tiny.eval()
    with torch.no_grad():
        ref = tiny((im * 255).round() / 255, lmb=2048.0)
    assert out["bpp"][1] == pytest.approx(float(ref["bpp"]), rel=1e-5)
    assert out["psnr"][1] == pytest.approx(float(ref["psnr"]), rel=1e-5)
    # A 50×70 image is padded to 64×128 but its bits are spread over its own 3500 pixels.
    odd = (torch.rand(1, 3, 50, 70) * 255).to(torch.uint8)
    res = evaluate(tiny, [odd], [128.0], CPU)
    x = torch.nn.functional.pad(odd.float() / 255, (0, 58, 0, 14), mode="replicate")
    with torch.no_grad():
        bits = float(tiny(x, lmb=128.0)["kl"].sum()) * math.log2(math.e)
    assert res["bpp"][0] == pytest.approx(bits / 3500, rel=1e-5) and res["images"] == 1


def test_bd_rate_against_the_shipped_vtm_anchor():
    pytest.importorskip("lvae.metrics")
    anchor = anchor_curve("kodak")
    assert anchor is not None and anchor_curve("/some/folder") is None
    bpp, psnr = anchor["results"]["bpp"], anchor["results"]["psnr"]
    assert bd_rate_vs_anchor(anchor, bpp, psnr) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate_vs_anchor(anchor, [b * 0.9 for b in bpp], psnr) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate_vs_anchor(anchor, [0.01, 0.02, 0.03, 0.04], [5, 6, 7, 8]) is None  # no PSNR overlap


def test_missing_wandb_gives_an_install_hint(monkeypatch, tmp_path):
    from lvae.training.config import TrainingError
    from lvae.training.tracking import init_wandb

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(TrainingError, match=r"pip install 'lvae\[wandb\]'"):
        init_wandb("p", "g", "n", "offline", {}, tmp_path)


def test_lambda_normalised_loss_weights_each_image_by_lmb_mid_over_lmb(tiny):
    torch.manual_seed(0)
    tiny.train()
    im = torch.rand(3, 3, 64, 64)
    lmb = torch.tensor([16.0, 181.0, 2048.0])
    out = tiny(im, lmb=lmb)
    assert training_loss(out, im, "none", 181.0) is out["loss"]
    rate = out["kl"].sum(dim=1) / (3 * 64 * 64)
    dist = (out["x_hat"] - (im * 2 - 1)).pow(2).flatten(1).mean(dim=1)
    per_image = rate + lmb * dist
    assert out["loss"].item() == pytest.approx(per_image.mean().item(), rel=1e-5)
    expected = (per_image * 181.0 / lmb).mean()
    got = training_loss(out, im, "lmb", 181.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.requires_grad
    with pytest.raises(ConfigError, match="loss_norm"):
        parse_args(["--loss_norm", "sqrt"])
