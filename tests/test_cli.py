"""The ``lvae`` command, run end to end in subprocesses (``python -m lvae``) with qarv_tiny."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae import cli
from lvae.bitstream import read_header
from lvae.io import load_image, tensor_to_image
from lvae.models.fixed_weights import load_fixed_reference_weights
from lvae.models.registry import model_weights

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TINY = ["--model", "qarv_tiny"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a qarv_tiny checkpoint, two smooth images and an empty torch hub cache."""
    root = tmp_path_factory.mktemp("cli")
    model = load_fixed_reference_weights(lvae.get_model("qarv_tiny"))
    torch.save({"model": model.state_dict()}, root / "tiny.pt")
    rng = np.random.default_rng(3)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    img = np.asarray(coarse.resize((96, 70), Image.BICUBIC))
    Image.fromarray(img).save(root / "a.png")
    Image.fromarray(img[:50, 20:65]).save(root / "b.png")
    (root / "torch_home").mkdir()
    return root


def run(work: Path, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TORCH_HOME"] = str(work / "torch_home")
    # Any download attempt fails at once (a closed local port) instead of reaching the network.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env["no_proxy"] = env["NO_PROXY"] = ""
    env["OMP_NUM_THREADS"] = "1"  # tiny jobs: two threads only slow them on a loaded 2-core machine
    cmd = [sys.executable, "-m", "lvae", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd or work, env=env, capture_output=True, text=True, timeout=300)


def with_weights(work: Path) -> list[str]:
    return [*TINY, "--weights", str(work / "tiny.pt")]


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr's lines, which must all be ``lvae: error: ...`` lines (no traceback, no warnings)."""
    lines = proc.stderr.splitlines()
    assert all(line.startswith("lvae: error: ") for line in lines), proc.stderr
    return lines


def tiny_model(work: Path):
    model = lvae.get_model("qarv_tiny", pretrained=str(work / "tiny.pt")).eval()
    return model.compress_mode(True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean()))


# -- the happy paths --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coded(work):
    """``lvae compress a.png b.png --out-dir codes --force`` over a stale (damaged) codes/b.lvae."""
    codes = work / "codes"
    codes.mkdir()
    (codes / "b.lvae").write_bytes(b"LVAE\x02stale")  # lvae's magic: a file lvae wrote, so --force replaces it
    proc = run(work, "compress", work / "a.png", work / "b.png", "--out-dir", codes, "--force", *with_weights(work))
    return proc, codes


def test_compress_decompress_info_round_trip(work, coded, tmp_path):
    proc, codes = coded
    assert proc.returncode == 0, proc.stderr
    assert error_lines(proc) == []
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    printed = {}
    for line, stem, size in zip(lines, "ab", ("96x70", "45x50")):
        m = re.fullmatch(
            rf".*{stem}\.png -> (\S+): (\d+) bytes, ([\d.]+) bpp, PSNR ([\d.]+) dB, qarv_tiny, lmb 181, {size}", line
        )
        assert m, line
        out = Path(m.group(1))
        assert out == codes / f"{stem}.lvae" and out.is_file()
        assert int(m.group(2)) == out.stat().st_size
        w, h = map(int, size.split("x"))
        assert float(m.group(3)) == pytest.approx(8 * out.stat().st_size / (w * h), abs=1e-4)
        printed[stem] = float(m.group(4))
    assert read_header((codes / "b.lvae").read_bytes()).model_name == "qarv_tiny"  # --force replaced it

    dec = tmp_path / "dec"
    proc = run(work, "decompress", codes / "a.lvae", codes / "b.lvae", "--out-dir", dec, "--weights", work / "tiny.pt")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(rf".*a\.lvae -> {re.escape(str(dec / 'a.lvae.png'))}: \d+ bytes, [\d.]+ bpp, 96x70, "
                        r"RGB PNG \(lossless\)", lines[0])
    assert re.fullmatch(rf".*b\.lvae -> {re.escape(str(dec / 'b.lvae.png'))}: \d+ bytes, [\d.]+ bpp, 45x50, "
                        r"RGB PNG \(lossless\)", lines[1])

    model = tiny_model(work)
    for stem in "ab":
        expected = np.asarray(tensor_to_image(model.decompress((codes / f"{stem}.lvae").read_bytes())))
        assert np.array_equal(np.asarray(Image.open(dec / f"{stem}.lvae.png")), expected)
        decoded = load_image(dec / f"{stem}.lvae.png")
        # the printed PSNR is that of the 8-bit image written (issue 15, point 4)
        assert printed[stem] == pytest.approx(psnr(decoded, load_image(work / f"{stem}.png")), abs=0.005)

    proc = run(work, "info", codes / "a.lvae", DATA / "legacy_lmb16.bits")
    assert proc.returncode == 0, proc.stderr
    header = read_header((codes / "a.lvae").read_bytes())
    size = (codes / "a.lvae").stat().st_size
    assert "model:    qarv_tiny" in proc.stdout
    assert "lambda:   181.019" in proc.stdout
    assert "size:     96x70" in proc.stdout
    assert f"bytes:    {size} (" in proc.stdout
    lengths = header.string_lengths
    assert f"{len(lengths)} blocks, {sum(lengths)} bytes: {' '.join(map(str, lengths))}" in proc.stdout
    legacy = read_header((DATA / "legacy_lmb16.bits").read_bytes())
    assert "format:   legacy (version 0)" in proc.stdout
    assert "model:    qarv_base (authors' layout" in proc.stdout
    assert " ".join(map(str, legacy.string_lengths)) in proc.stdout


def models_table(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines()[1:]}


def test_models_lists_offline_weights(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert cli.main(["models"]) == 0
    rows = models_table(capsys.readouterr().out)
    assert set(rows) == set(lvae.list_models())
    assert rows["qarv_base"].split()[1] == "no"
    assert str(tmp_path / "hub" / "checkpoints" / "qarv_base-2022-dec-12.pt") in rows["qarv_base"]
    unpublished = [name for name in rows if model_weights(name) is None]
    assert "qarv_tiny" in unpublished or model_weights("qarv_tiny").package_file
    for name in unpublished:
        assert rows[name].split()[1] == "no" and "--weights FILE" in rows[name]

    cached = work / "torch_home" / "hub" / "checkpoints" / "qarv_base-2022-dec-12.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    try:
        proc = run(work, "models")
    finally:
        cached.unlink()
    assert proc.returncode == 0, proc.stderr
    rows = models_table(proc.stdout)
    assert rows["qarv_base"].split()[1] == "yes" and str(cached) in rows["qarv_base"]


# -- errors: one line per failed file, the others go on -------------------------------------------
def test_compress_bad_inputs_are_reported_and_skipped(work, tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.lvae").write_bytes(b"LVAE old")  # a file lvae wrote (its magic): --force would replace it
    inputs = [tmp_path / "missing.png", tmp_path / "text.png", work / "a.png", tmp_path / "empty.jpg",
              tmp_path / "folder.png", work / "b.png"]
    proc = run(work, "compress", *inputs, "--out-dir", out, *with_weights(work))
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert len(errors) == 5, proc.stderr
    assert errors[0] == f"lvae: error: {inputs[0]}: no such file"
    assert errors[1].startswith(f"lvae: error: {inputs[1]}: cannot read") and "as an image" in errors[1]
    assert errors[2].startswith(f"lvae: error: {inputs[3]}: cannot read")
    assert errors[3] == f"lvae: error: {inputs[4]}: not a regular file"
    assert errors[4] == f"lvae: error: {inputs[5]}: the output {out / 'b.lvae'} exists; pass --force to replace it"
    assert len(proc.stdout.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.lvae", "b.lvae"]
    assert (out / "b.lvae").read_bytes() == b"LVAE old"


def test_bad_lambda_and_impossible_targets_leave_existing_output_alone(work, tmp_path):
    out = tmp_path / "kept.lvae"
    out.write_bytes(b"LVAE precious")  # lvae's magic: --force may replace it, a failed encode must not
    cases = [
        (["--lmb", "5000"], "outside this model's range [16, 2048]"),
        (["--bytes", "3"], "impossible target"),
        (["--bpp", "0.0001"], "over the target of 0.0001 bpp (0 bytes)"),  # answered in the units asked
    ]
    for option, message in cases:
        proc = run(work, "compress", work / "a.png", "-o", out, "--force", *option, *with_weights(work))
        assert proc.returncode == 1, proc.stdout
        errors = error_lines(proc)
        assert len(errors) == 1 and errors[0].startswith(f"lvae: error: {work / 'a.png'}: ")
        assert message in errors[0]
        assert out.read_bytes() == b"LVAE precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.lvae"]  # no temporary files left


def test_the_input_is_never_overwritten(work, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes((work / "a.png").read_bytes())
    proc = run(work, "compress", image, "-o", image, "--force", *with_weights(work))
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert line.startswith(f"lvae: error: {image}: the output {image} would overwrite the input")
    assert image.read_bytes() == (work / "a.png").read_bytes()


def test_decompress_bad_files_are_reported_and_skipped(work, coded, tmp_path):
    data = (coded[1] / "a.lvae").read_bytes()
    files = {
        "truncated.lvae": data[: len(data) // 2],
        "empty.lvae": b"",
        "good.lvae": data,
        "foreign.lvae": (work / "b.png").read_bytes(),
        "corrupted.lvae": data[:40] + bytes([data[40] ^ 0x40]) + data[41:],
        "legacy.bits": (DATA / "legacy_lmb16.bits").read_bytes(),
        "photo.png": (work / "b.png").read_bytes(),  # not a coded file (its output photo.png.png is not made)
        "taken.lvae": data,
        "taken.lvae.png": b"keep me",  # an existing file lvae did not write: never overwritten, no --force advice
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    args = [tmp_path / n for n in files if n != "taken.lvae.png"]
    args.insert(3, tmp_path / "absent.lvae")
    proc = run(work, "decompress", *args, *with_weights(work))
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert [e.split(": ")[2] for e in errors] == [str(a) for a in args if a.name != "good.lvae"]
    expected = [
        "the file is truncated",
        "empty file",
        "no such file",
        "neither an lvae file nor an authors' QARV file",
        "the file is corrupted",
        "made by model 'qarv_base', not by 'qarv_tiny'",
        "neither an lvae file nor an authors' QARV file",
        "is not an image lvae wrote (PNG, JPEG and TIFF carry lvae's mark, other formats cannot); "
        "choose another name with -o or --out-dir",
    ]
    for error, message in zip(errors, expected, strict=True):
        assert message in error
    assert proc.stdout.count("\n") == 1 and "good.lvae ->" in proc.stdout
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in files)
    assert made == ["good.lvae.png"]
    assert (tmp_path / "taken.lvae.png").read_bytes() == b"keep me"
    assert (tmp_path / "photo.png").read_bytes() == (work / "b.png").read_bytes()
    assert "--force" not in errors[-1]


def test_missing_qarv_base_weights_give_one_clear_line(work, tmp_path):
    proc = run(work, "compress", work / "a.png", work / "b.png", "--out-dir", tmp_path, "--model", "qarv_base")
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert len(errors) == 2, proc.stderr
    for error, image in zip(errors, ("a.png", "b.png")):
        assert error.startswith(f"lvae: error: {work / image}: could not download the weights of 'qarv_base'")
        assert str(work / "torch_home" / "hub" / "checkpoints" / "qarv_base-2022-dec-12.pt") in error
        assert "--weights FILE" in error
        assert "Models shipped in the package work offline: qarv_small" in error
    assert list(tmp_path.iterdir()) == []
    # The authors' layout only holds qarv_base, so --format legacy alone means qarv_base.
    proc = run(work, "compress", work / "a.png", "--out-dir", tmp_path, "--format", "legacy")
    [error] = error_lines(proc)
    assert "could not download the weights of 'qarv_base'" in error
    assert list(tmp_path.iterdir()) == []


def test_default_model_is_the_packaged_one_and_works_offline(work, tmp_path):
    """No --model, no network, empty hub cache: qarv_small from the package codes the image."""
    assert cli.DEFAULT_MODEL == "qarv_small" and model_weights("qarv_small").package_file
    proc = run(work, "compress", work / "a.png", "-o", tmp_path / "a.lvae", "--lmb", "64")
    assert proc.returncode == 0, proc.stderr
    assert ", qarv_small, lmb 64, 96x70" in proc.stdout
    assert read_header((tmp_path / "a.lvae").read_bytes()).model_name == "qarv_small"
    proc = run(work, "decompress", tmp_path / "a.lvae")
    assert proc.returncode == 0, proc.stderr
    assert load_image(tmp_path / "a.lvae.png").shape == (1, 3, 70, 96)
    proc = run(work, "models")
    assert "(default for compress)" in models_table(proc.stdout)["qarv_small"]


# -- usage errors and the delegated subcommands -------------------------------------------------------
def test_usage_errors_exit_2(work):
    proc = run(work, "compress", work / "a.png", work / "b.png", "-o", "x.lvae", *with_weights(work))
    assert proc.returncode == 2
    assert "-o/--output takes a single input" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required"),
        (["compress"], "required"),
        (["compress", "a.png", "--lmb", "-1"], "positive finite number"),
        (["compress", "a.png", "--lmb", "nan"], "positive finite number"),
        (["compress", "a.png", "--bytes", "1.5"], "not an integer"),
        (["compress", "a.png", "--lmb", "10", "--bpp", "1"], "not allowed with"),
        (["compress", "a.png", "-o", "x", "--out-dir", "d"], "not allowed with"),
        (["compress", "a.png", "--model", "nosuch"], "invalid choice"),
        (["compress", "a.png", "--device", "nonsense"], "not a torch device"),
        (["compress", "a.png", *TINY, "--format", "legacy"], "--format legacy"),
        (["decompress", "a.lvae", "b.lvae", "-o", "x.png"], "single input"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without CUDA")
def test_cuda_device_without_cuda(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "a.png", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command, script", [("eval", "eval-var-rate.py"), ("plot", None), ("bdrate", None)])
def test_eval_plot_and_bdrate_are_real_subcommands(command, script, capsys):
    """Their options are part of `lvae`'s own parser (no hand-over of sys.argv), and the script
    eval-var-rate.py parses the very same options."""
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: lvae {command} ")
    options = sorted(set(re.findall(r"(?<![\w-])--\w[\w-]*", shown)))
    assert len(options) >= (1 if command == "bdrate" else 4)
    if script is not None:
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert sorted(set(re.findall(r"(?<![\w-])--\w[\w-]*", proc.stdout))) == options


def test_eval_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--model", "qarv_tiny", "--codec", "jpeg"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- progressive decoding ------------------------------------------------------------------------
def test_truncate_and_progressive_decoding(work, coded, tmp_path):
    src = coded[1] / "a.lvae"
    n = read_header(src.read_bytes()).num_strings
    proc = run(work, "truncate", src, "-o", tmp_path / "a2.lvae", "--latents", 2)
    assert proc.returncode == 0 and "2 of 4 latents" in proc.stdout, proc.stderr
    cut = (tmp_path / "a2.lvae").read_bytes()
    assert read_header(cut).num_strings == 2
    proc = run(work, "truncate", src, "-o", tmp_path / "fit.lvae", "--bytes", len(cut))
    assert proc.returncode == 0 and (tmp_path / "fit.lvae").read_bytes() == cut
    # the same image: decoded from the cut file, and from the whole file with --latents 2
    proc = run(work, "decompress", tmp_path / "a2.lvae", "-o", tmp_path / "cut.png", *with_weights(work))
    assert proc.returncode == 0
    proc = run(work, "decompress", src, "--latents", 2, "-o", tmp_path / "two.png", *with_weights(work))
    assert proc.returncode == 0 and "2 of 4 latents" in proc.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cut.png")), np.asarray(Image.open(tmp_path / "two.png")))
    proc = run(work, "decompress", src, "--progressive", "-o", tmp_path / "p.png", "--figure", tmp_path / "fig.png",
               *with_weights(work))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "fig.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.glob("p-k*.png")) == [f"p-k{k}.png" for k in range(n + 1)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p-k2.png")), np.asarray(Image.open(tmp_path / "two.png")))
    info = run(work, "info", src).stdout
    assert "prefixes: k=0:" in info and f"k={n}: {src.stat().st_size} B" in info


def test_truncate_errors(work, coded, tmp_path):
    src = coded[1] / "a.lvae"
    existing = tmp_path / "kept.lvae"
    existing.write_bytes(b"LVAE precious")
    cases = [
        (["--bytes", 10], "impossible budget"),
        (["--latents", 9], "holds 4 latent strings"),
    ]
    for extra, message in cases:
        proc = run(work, "truncate", src, "-o", tmp_path / "x.lvae", *extra)
        assert proc.returncode == 1 and message in error_lines(proc)[0]
    proc = run(work, "truncate", src, "-o", existing, "--latents", 1)
    assert proc.returncode == 1 and "--force" in error_lines(proc)[0] and existing.read_bytes() == b"LVAE precious"
    legacy = tmp_path / "l.bits"
    legacy.write_bytes((DATA / "legacy_lmb16.bits").read_bytes())
    proc = run(work, "truncate", legacy, "-o", tmp_path / "y.lvae", "--latents", 1)
    assert proc.returncode == 1 and "cannot be truncated" in error_lines(proc)[0]
    proc = run(work, "truncate", src, "-o", tmp_path / "z.lvae", "--latents", -1)
    assert proc.returncode == 2
    proc = run(work, "decompress", src, "--figure", tmp_path / "f.png", *with_weights(work))
    assert proc.returncode == 2 and "--progressive" in proc.stderr
    assert not (tmp_path / "x.lvae").exists() and not (tmp_path / "y.lvae").exists()


def test_compress_then_decompress_never_replaces_the_source_image(work, tmp_path):
    """photo.png -> photo.lvae -> photo.lvae.png: the original is never touched, --force or not."""
    photo = tmp_path / "photo.png"
    photo.write_bytes((work / "a.png").read_bytes())
    original = photo.read_bytes()
    assert run(work, "compress", photo, *with_weights(work)).returncode == 0
    for extra in ([], ["--force"]):
        proc = run(work, "decompress", tmp_path / "photo.lvae", *extra, *with_weights(work))
        assert proc.returncode == 0, proc.stderr
        assert f"-> {tmp_path / 'photo.lvae.png'}" in proc.stdout
    assert photo.read_bytes() == original
    # decoding again: the existing output is lvae's own, so --force is the advice
    proc = run(work, "decompress", tmp_path / "photo.lvae", *with_weights(work))
    assert proc.returncode == 1 and "pass --force" in error_lines(proc)[0]


def test_other_weights_are_refused_unless_asked(work, coded, tmp_path):
    """A file names its weights: decoding with a checkpoint that differs in one layer is refused."""
    sd = torch.load(work / "tiny.pt", weights_only=True)["model"]
    key = [k for k in sd if k.startswith("dec_blocks.") and k.endswith(".weight")][-1]  # the last layer: decodable
    sd[key] = sd[key] * 1.01
    torch.save({"model": sd}, tmp_path / "other.pt")
    src = coded[1] / "a.lvae"
    proc = run(work, "decompress", src, "-o", tmp_path / "x.png", *TINY, "--weights", tmp_path / "other.pt")
    assert proc.returncode == 1
    [line] = error_lines(proc)
    fingerprint = read_header(src.read_bytes()).fingerprint.hex()
    assert "made with other weights" in line and fingerprint in line
    assert not (tmp_path / "x.png").exists()
    proc = run(work, "decompress", src, "-o", tmp_path / "x.png", *TINY, "--weights", tmp_path / "other.pt",
               "--ignore-weights-mismatch")
    assert proc.returncode == 0, proc.stderr
