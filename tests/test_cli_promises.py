"""Issue 25 through the real ``lvae`` command (``lvae.cli.main`` in-process, or the installed
console script where a real process matters: pipes), on tiny images:

1. no result is overwritten: ``lvae eval`` / ``eval-var-rate.py`` and ``lvae plot`` replace an
   existing file only with ``--force``, and never a file lvae did not write, checked before any work;
2. a reader that goes away (``| head -1``) is no error: no traceback, the work goes on, the
   exit status says only whether the work succeeded;
5. every text is true: ``lvae.paths.known_datasets``, the ``--device`` and ``--out-dir`` help,
   ``--progressive`` lines printed as each image is written, ``plot -o x.pdf`` writes a PDF,
   ``compress_mode`` in the README, the ``--ignore-weights-mismatch`` advice, ``info`` at 0 blocks;
8. one set of conventions: both spellings of every long option, one meaning of ``--weights``,
   one default device (cpu) and one status (2) for an unavailable one, ``-o`` and ``--out-dir``
   create a missing folder alike.
"""
from __future__ import annotations

import json
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
from lvae.cli import evaluate, plot
from lvae.io import load_image, written_by_lvae
from lvae.utils import datasets

from conftest import exit_status

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("lvae")  # the installed console script
TINY_IMAGE = (64, 48)


def lvae_main(*args) -> int:
    """``lvae ARGS`` in-process: its exit status."""
    return exit_status(cli.main, *args)


standalone = exit_status  # eval-var-rate.py's or lvae plot's main, in-process


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """a.png and b.png (64×48), a folder ``imgs`` of one image, a random qarv_tiny checkpoint."""
    root = tmp_path_factory.mktemp("promises")
    rng = np.random.default_rng(25)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    img = coarse.resize(TINY_IMAGE, Image.BICUBIC)
    img.save(root / "a.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(root / "b.png")
    (root / "imgs").mkdir()
    img.save(root / "imgs" / "x.png")
    torch.manual_seed(25)
    torch.save({"model": lvae.get_model("qarv_tiny").state_dict()}, root / "tiny.pt")
    (root / "torch_home").mkdir()
    return root


@pytest.fixture(scope="module")
def coded(work):
    """a.lvae: a.png coded by the packaged qarv_small."""
    out = work / "coded" / "a.lvae"
    out.parent.mkdir()
    assert lvae_main("compress", work / "a.png", "-o", out, "--lmb", 64) == 0
    return out


def one_error(capsys, start: str = "") -> str:
    """stderr holds exactly one line (starting with ``start``): returned."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(start), err[0]
    return err[0]


def jpeg_eval(work: Path, output: Path | None, *extra, quality: int = 50) -> list:
    args = ["eval", "--codec", "jpeg", "--qualities", quality, "--dataset_name", work / "imgs", "--no_progress"]
    return args + (["--output", output] if output is not None else []) + list(extra)


# -- 1: no result overwritten -------------------------------------------------------------------
def test_eval_replaces_an_existing_result_only_with_force(work, tmp_path, capsys):
    out = tmp_path / "existing.json"
    assert lvae_main(*jpeg_eval(work, out)) == 0
    first = out.read_bytes()
    assert json.loads(first)["qualities"] == [50]
    capsys.readouterr()
    assert lvae_main(*jpeg_eval(work, out, quality=60)) == 1
    assert out.read_bytes() == first
    assert "exists; pass --force" in one_error(capsys, "error: ")
    # with --force, a result lvae wrote is replaced
    assert lvae_main(*jpeg_eval(work, out, "--force", quality=60)) == 0
    assert json.loads(out.read_bytes())["qualities"] == [60]


def test_eval_never_replaces_a_file_it_did_not_write(work, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    for force in ([], ["--force"], ["-f"]):
        assert lvae_main(*jpeg_eval(work, notes, *force)) == 1
        assert notes.read_text() == '{"my": "notes"}'
        assert "is not a result JSON lvae wrote" in one_error(capsys, "error: ")
    # eval-var-rate.py: the same command line
    assert standalone(evaluate.main, *jpeg_eval(work, notes, "--force")[1:]) == 1
    assert notes.read_text() == '{"my": "notes"}'


def test_the_default_output_is_refused_before_any_work(work, tmp_path, monkeypatch, capsys):
    """From a folder holding results/jpeg-imgs.json (the README's JPEG example run from the
    repository root would meet the committed results/jpeg-kodak.json the same way)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    committed = (REPO / "results" / "jpeg-kodak.json").read_bytes()
    (tmp_path / "results" / "jpeg-imgs.json").write_bytes(committed)
    assert lvae_main(*jpeg_eval(work, None)) == 1
    assert (tmp_path / "results" / "jpeg-imgs.json").read_bytes() == committed
    assert "results/jpeg-imgs.json exists; pass --force" in one_error(capsys)
    assert capsys.readouterr().out == ""  # refused before anything was measured


def test_progressive_eval_checks_its_plot_before_any_work(work, tmp_path, capsys):
    out = tmp_path / "prog.json"
    photo = tmp_path / "prog.png"
    Image.new("RGB", (8, 8), "red").save(photo)  # a PNG lvae did not write, where the plot goes
    kept = photo.read_bytes()
    args = ["eval", "--model", "qarv_tiny", "--weights", "random", "--dataset_name", work / "imgs", "--steps", 1,
            "--no_progress", "--progressive", "--output", out]
    assert lvae_main(*args, "--force") == 1
    assert "prog.png exists and is not a figure lvae wrote" in one_error(capsys)
    assert photo.read_bytes() == kept and not out.exists()  # nothing measured, nothing written
    photo.unlink()
    assert lvae_main(*args) == 0
    assert written_by_lvae(photo)
    capsys.readouterr()
    assert lvae_main(*args) == 1
    assert "prog.json exists; pass --force" in one_error(capsys)
    assert lvae_main(*args, "--force") == 0  # both are lvae's own: replaced


def test_plot_replaces_only_its_own_figures_and_only_with_force(work, tmp_path, capsys):
    result = tmp_path / "r.json"
    assert lvae_main(*jpeg_eval(work, result)) == 0
    for suffix in (".png", ".pdf", ".svg"):
        out = tmp_path / f"rd{suffix}"
        assert lvae_main("plot", result, "-o", out, "--title", "first") == 0
        first = out.read_bytes()
        capsys.readouterr()
        assert lvae_main("plot", result, "-o", out) == 1
        assert out.read_bytes() == first
        assert "exists; pass --force" in one_error(capsys, "error: ")
        assert lvae_main("plot", result, "-o", out, "--force", "--title", "second") == 0
        assert out.read_bytes() != first
    foreign = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "blue").save(foreign)
    kept = foreign.read_bytes()
    capsys.readouterr()
    assert standalone(plot.main, result, "-o", foreign, "--force") == 1
    assert foreign.read_bytes() == kept
    assert "is not a figure lvae wrote" in one_error(capsys, "error: ")


def test_decompress_figure_replaces_only_an_lvae_figure(work, coded, tmp_path, capsys):
    figure = tmp_path / "fig.png"
    Image.new("RGB", (8, 8), "green").save(figure)
    kept = figure.read_bytes()
    assert lvae_main("decompress", coded, "--progressive", "-o", tmp_path / "p.png", "--figure", figure,
                     "--force") == 1
    assert figure.read_bytes() == kept
    assert "is not a figure lvae wrote" in one_error(capsys)
    assert not list(tmp_path.glob("p-k*.png"))  # refused before any prefix was decoded


def test_force_replaces_only_what_lvae_wrote_in_the_coding_commands(work, coded, tmp_path, capsys):
    """compress, decompress and truncate follow the same rule: --force replaces a file lvae coded
    or an image it wrote, never a user's file that happens to have the output's name."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "green").save(photo)
    kept = photo.read_bytes()
    assert lvae_main("compress", work / "a.png", "-o", photo, "--force", "--lmb", 64) == 1
    assert "is not a coded file lvae wrote" in one_error(capsys)
    assert lvae_main("decompress", coded, "-o", photo, "--force") == 1
    assert "is not an image lvae wrote" in one_error(capsys)
    assert lvae_main("truncate", coded, "-o", photo, "--latents", 1, "--force") == 1
    assert "is not a coded file lvae wrote" in one_error(capsys)
    assert photo.read_bytes() == kept
    # lvae's own outputs are replaced with --force (and only with it)
    own, image = tmp_path / "own.lvae", tmp_path / "own.png"
    assert lvae_main("compress", work / "a.png", "-o", own, "--lmb", 32) == 0
    assert lvae_main("compress", work / "a.png", "-o", own, "--lmb", 64) == 1
    assert lvae_main("compress", work / "a.png", "-o", own, "--lmb", 64, "--force") == 0
    assert own.read_bytes() == coded.read_bytes()  # a.png at λ 64, as the fixture coded it
    assert lvae_main("truncate", coded, "-o", own, "--latents", 1, "--force") == 0
    assert read_header(own.read_bytes()).num_strings == 1
    assert lvae_main("decompress", coded, "-o", image) == 0
    assert lvae_main("decompress", own, "-o", image, "--force") == 0
    capsys.readouterr()


# -- 2: a reader that goes away -------------------------------------------------------------------
def child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TORCH_HOME"] = str(work / "torch_home")
    env["OMP_NUM_THREADS"] = "1"
    return env


def launcher() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "lvae"]


def closed_reader(work: Path, *args, lines: int = 0) -> tuple[int, str]:
    """``lvae ARGS | head -n LINES``: read ``lines`` lines of stdout, then close it; (status, stderr)."""
    proc = subprocess.Popen([*launcher(), *map(str, args)], cwd=work, env=child_env(work),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


@pytest.mark.parametrize("lines", [0, 1])
def test_info_and_models_into_a_closed_pipe(work, coded, lines):
    for args in (["info", coded, coded], ["models"]):
        rc, err = closed_reader(work, *args, lines=lines)
        assert (rc, err) == (0, ""), args


def test_compress_into_a_closed_pipe_writes_and_reports_every_file(work, tmp_path):
    # `| head -1`: the first line read, then the reader goes
    rc, err = closed_reader(work, "compress", work / "a.png", work / "b.png", "--out-dir", tmp_path / "h1",
                            lines=1)
    assert (rc, err) == (0, "")
    assert sorted(p.name for p in (tmp_path / "h1").iterdir()) == ["a.lvae", "b.lvae"]
    # a reader gone before the first line: every file is written all the same; a real failure
    # still counts, and is still said (on stderr, which is open)
    rc, err = closed_reader(work, "compress", work / "a.png", work / "missing.png", work / "b.png",
                            "--out-dir", tmp_path / "bp")
    assert rc == 1 and err.splitlines() == [f"lvae: error: {work / 'missing.png'}: no such file"]
    assert sorted(p.name for p in (tmp_path / "bp").iterdir()) == ["a.lvae", "b.lvae"]
    for p in (tmp_path / "bp").iterdir():
        assert read_header(p.read_bytes()).model_name == "qarv_small"


# -- 5: texts that are true ---------------------------------------------------------------------
def test_lvae_paths_known_datasets_is_the_name_the_authors_readme_gave(monkeypatch, tmp_path):
    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path))
    import lvae.paths
    from lvae.paths import known_datasets

    assert isinstance(known_datasets, dict)
    assert known_datasets == {name: str(tmp_path / folder) for name, folder in datasets.known_datasets.items()}
    assert lvae.paths.known_datasets["kodak"] == str(tmp_path / "kodak")
    (tmp_path / "kodak").mkdir()
    assert datasets.resolve_dataset("kodak") == Path(lvae.paths.known_datasets["kodak"])


def help_text(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "lvae", *args, "--help"], capture_output=True, text=True,
                          env=child_env(REPO), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())


def test_help_texts_say_what_the_commands_do():
    for command in ("compress", "decompress", "eval"):
        text = help_text(command)
        assert "Files decode on any device, whichever device made them" in text, command
        assert "same kind of device" not in text, command
    text = help_text("decompress")
    assert "write <input name>.png (photo.lvae -> photo.lvae.png" in text and "<input stem>" not in text
    assert "write <image stem>.lvae" in help_text("compress")


def test_decompress_out_dir_writes_what_its_help_names(work, coded, tmp_path):
    assert lvae_main("decompress", coded, "--out-dir", tmp_path / "dec") == 0
    assert [p.name for p in (tmp_path / "dec").iterdir()] == ["a.lvae.png"]


def test_progressive_lines_come_as_each_image_is_written(work, coded, tmp_path, monkeypatch, capsys):
    """Before each prefix image is written, the lines of all the earlier ones are out (a spy on
    the real writer); after Ctrl-C, every image on disk has had its line (test_cli_safety.py)."""
    import lvae.io

    real = lvae.io.save_image
    printed_before: list[str] = []

    def spy(img, path, *args, **kwargs):
        printed_before.append(capsys.readouterr().out)
        return real(img, path, *args, **kwargs)

    monkeypatch.setattr(lvae.io, "save_image", spy)
    assert lvae_main("decompress", coded, "--progressive", "-o", tmp_path / "p.png") == 0
    last = capsys.readouterr().out
    n = read_header(coded.read_bytes()).num_strings
    assert len(printed_before) == n + 1
    for k, out in enumerate(printed_before):
        assert [f"p-k{j}.png" in out for j in range(n + 1)] == [j == k - 1 for j in range(n + 1)], (k, out)
    assert f"p-k{n}.png" in last


def test_plot_writes_the_format_its_suffix_names(work, tmp_path, capsys):
    result = tmp_path / "r.json"
    assert lvae_main(*jpeg_eval(work, result)) == 0
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF-", ".svg": b"<?xml"}
    for suffix, start in magic.items():
        assert lvae_main("plot", result, "-o", tmp_path / f"rd{suffix}") == 0
        assert (tmp_path / f"rd{suffix}").read_bytes().startswith(start), suffix
    from lvae.eval.plot import figure_written_by_lvae

    assert all(figure_written_by_lvae(tmp_path / f"rd{suffix}") for suffix in magic)  # --force may replace them
    capsys.readouterr()
    for bad in ("rd.gif", "rd.jpg", "rd"):
        assert lvae_main("plot", result, "-o", tmp_path / bad) == 2
        assert "name it .png, .pdf or .svg" in one_error(capsys, "lvae plot: error: ")
        assert not (tmp_path / bad).exists()
    # decompress --figure takes the same formats
    assert lvae_main("decompress", tmp_path / "x.lvae", "--progressive", "--figure", tmp_path / "f.gif") == 2
    assert "name it .png, .pdf or .svg" in one_error(capsys)


def test_compress_mode_is_not_run_by_coding_as_the_readme_says():
    model = lvae.get_model("qarv_tiny").eval()
    gaussians = [block.discrete_gaussian for block in model.latent_blocks]
    data = model.compress(torch.rand(1, 3, 64, 64), lmb=64)
    model.decompress(data)
    assert not any(g.ready for g in gaussians)  # coding needs no tables in the state dict
    model.compress_mode(True)
    assert all(g.ready for g in gaussians)
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    sentence = readme[readme.index("`model.compress_mode(True)`"):][:300]
    assert "automatically" not in sentence and "coding never needs" in sentence


def test_other_weights_advice_names_the_flag(work, tmp_path, capsys):
    tiny = ["--model", "qarv_tiny", "--weights"]
    assert lvae_main("compress", work / "a.png", "-o", tmp_path / "t.lvae", *tiny, work / "tiny.pt") == 0
    torch.manual_seed(26)
    torch.save(lvae.get_model("qarv_tiny").state_dict(), tmp_path / "other.pt")
    capsys.readouterr()
    assert lvae_main("decompress", tmp_path / "t.lvae", *tiny, tmp_path / "other.pt") == 1
    line = one_error(capsys, "lvae: error: ")
    assert "made with other weights" in line and "--ignore-weights-mismatch" in line
    assert "ignore_weights_mismatch=True" not in line


def test_info_at_zero_blocks_has_no_dangling_colon(work, coded, tmp_path, capsys):
    assert lvae_main("truncate", coded, "-o", tmp_path / "zero.lvae", "--latents", 0) == 0
    capsys.readouterr()
    assert lvae_main("info", tmp_path / "zero.lvae", coded) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("latents:")]
    header = read_header(coded.read_bytes())
    n, total = header.num_strings, header.num_latents
    assert re.fullmatch(rf"latents:\s+0 of {total} blocks, 0 bytes", rows[0]), rows[0]
    assert re.fullmatch(rf"latents:\s+{n} of {total} blocks, \d+ bytes: \d+( \d+){{{n - 1}}}", rows[1]), rows[1]


# -- 8: one set of conventions ------------------------------------------------------------------
def test_every_long_option_takes_both_spellings():
    from lvae.utils.args import respell

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "compress" in a.choices).choices
    seen = 0
    for name, sub in subparsers.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and re.search(r"\w[-_]\w", option):
                    other = "--" + option[2:].translate(str.maketrans("-_", "_-"))
                    assert respell(sub, [other, "x"]) == [option, "x"], (name, option)
                    assert respell(sub, [f"{other}=x"]) == [f"{option}=x"], (name, option)
                    seen += 1
    assert seen >= 10
    # Help shows the lvae spelling, one per option.
    text = help_text("eval")
    assert "--dataset-name" in text and "--dataset_name" not in text and "--bf16-encoder" in text


def test_both_spellings_through_the_commands(work, tmp_path, capsys):
    for spelling in ("--dataset-name", "--dataset_name"):
        out = tmp_path / f"{spelling}.json"
        assert lvae_main("eval", "--codec", "jpeg", "--qualities", 50, spelling, work / "imgs", "--no-progress",
                         "--output", out) == 0
        assert json.loads(out.read_text())["test-set"] == "imgs"
    assert standalone(evaluate.main, "--codec", "jpeg", "--qualities", 50, "--dataset-name", work / "imgs",
                      "--no_progress", "--output", tmp_path / "script.json") == 0
    assert lvae_main("compress", work / "a.png", "--out_dir", tmp_path / "c", "--model", "qarv_tiny",
                     "--weights", work / "tiny.pt") == 0
    assert (tmp_path / "c" / "a.lvae").is_file()
    assert lvae_main("plot", tmp_path / "script.json", "-o", tmp_path / "p.png", "--no_anchors") == 0
    # train-var-rate.py's parser shares lvae.utils.args: the same rule
    from lvae.training.config import parse_args

    cfg, explicit = parse_args(["--lrf-min", "0.25", "--val_steps", "3"])
    assert (cfg.lrf_min, cfg.val_steps) == (0.25, 3) and {"lrf_min", "val_steps"} <= explicit


def test_weights_mean_the_same_everywhere(work, tmp_path, capsys):
    """A checkpoint, by default the model's own weights, an error if it has none; random weights
    only when asked (eval), never for a file."""
    assert lvae_main("eval", "--model", "qarv_tiny", "--dataset_name", work / "imgs", "--steps", 1,
                     "--no_progress", "--output", tmp_path / "r.json") == 1
    assert "'qarv_tiny' has no weights of its own: give a checkpoint with --weights FILE, or --weights random" in (
        one_error(capsys, "error: "))
    assert not (tmp_path / "r.json").exists()
    assert lvae_main("compress", work / "a.png", "-o", tmp_path / "t.lvae", "--model", "qarv_tiny") == 1
    assert "'qarv_tiny' has no weights of its own: give a checkpoint with --weights FILE" in one_error(capsys)
    assert lvae_main("compress", work / "a.png", "-o", tmp_path / "t.lvae", "--model", "qarv_tiny",
                     "--weights", "random") == 2
    assert "--weights random is for evaluation only" in one_error(capsys)
    assert not (tmp_path / "t.lvae").exists()
    assert lvae_main("eval", "--model", "qarv_tiny", "--weights", "random", "--dataset_name", work / "imgs",
                     "--steps", 1, "--no_progress", "--output", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["weights"] == "random"
    for command in (["compress", work / "a.png", "-o", tmp_path / "m.lvae"],
                    ["eval", "--dataset_name", work / "imgs", "--output", tmp_path / "m.json"]):
        capsys.readouterr()
        assert lvae_main(*command, "--model", "qarv_tiny", "--weights", tmp_path / "none.pt") == 1
        assert "none.pt" in one_error(capsys)


def test_one_default_device_and_one_status_for_an_unavailable_one(work, coded, tmp_path, capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "compress" in a.choices).choices
    with_device = [name for name, sub in subparsers.items()
                   if any("--device" in a.option_strings for a in sub._actions)]
    assert sorted(with_device) == ["compress", "decompress", "eval"]
    for name in with_device:
        assert subparsers[name].get_default("device") == "cpu", name
    cases = [
        (lvae_main, ["compress", work / "a.png", "-o", tmp_path / "x.lvae"]),
        (lvae_main, ["decompress", coded, "-o", tmp_path / "x.png"]),
        (lvae_main, jpeg_eval(work, tmp_path / "x.json")),
        (lambda *a: standalone(evaluate.main, *a), jpeg_eval(work, tmp_path / "x.json")[1:]),
    ]
    for run, args in cases:
        for device in ("cuda:99", "nonsense"):
            capsys.readouterr()
            assert run(*args, "--device", device) == 2, (args[0], device)
            assert "--device" in one_error(capsys)
    assert not list(tmp_path.iterdir())


def test_o_and_out_dir_create_a_missing_folder_alike(work, coded, tmp_path):
    tiny = ["--model", "qarv_tiny", "--weights", work / "tiny.pt"]
    assert lvae_main("compress", work / "a.png", "-o", tmp_path / "o1" / "deep" / "a.lvae", *tiny) == 0
    assert lvae_main("compress", work / "a.png", "--out-dir", tmp_path / "d1" / "deep", *tiny) == 0
    assert (tmp_path / "o1" / "deep" / "a.lvae").read_bytes() == (tmp_path / "d1" / "deep" / "a.lvae").read_bytes()
    assert lvae_main("decompress", coded, "-o", tmp_path / "o2" / "a.png") == 0
    assert lvae_main("decompress", coded, "--out-dir", tmp_path / "d2") == 0
    assert load_image(tmp_path / "o2" / "a.png").equal(load_image(tmp_path / "d2" / "a.lvae.png"))
    assert lvae_main("truncate", coded, "-o", tmp_path / "o3" / "cut.lvae", "--latents", 2) == 0
    assert read_header((tmp_path / "o3" / "cut.lvae").read_bytes()).num_strings == 2
    assert lvae_main(*jpeg_eval(work, tmp_path / "o4" / "r.json")) == 0
    assert lvae_main("plot", tmp_path / "o4" / "r.json", "-o", tmp_path / "o5" / "rd.svg") == 0
    assert (tmp_path / "o5" / "rd.svg").is_file()
