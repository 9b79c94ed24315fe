"""benchmarks/coding.py --authors PATH: what can be checked without the authors' code.

The user errors (no folder, not their repository, a missing dependency of their code, a λ that is
not a published qres34m member) end the run with one readable line and a non-zero status; the
worker never falls back on this repository's ``lvae``; the sanity check tells identical bytes from
a real mismatch, in QARV's layout and in QRes-VAE's pickle. With a clone of
https://github.com/duanzhiihao/lossy-vae in ``LVAE_AUTHORS_CLONE`` (and timm installed:
``pip install -e '.[bench]'``), ``pytest -m slow tests/test_bench_authors.py`` also runs the
benchmark on it end to end, for qarv_base and qres34m.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lvae
from lvae.bitstream import pack_legacy
from lvae.coding.pickled import pack_qres_legacy, parse_qres_legacy
from lvae.models.fixed_weights import load_fixed_reference_weights

REPO = Path(__file__).resolve().parents[1]
CODING = REPO / "benchmarks" / "coding.py"
WORKER = REPO / "benchmarks" / "authors_worker.py"


def _run(args: list[str], stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env))


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one line on stderr (no traceback) and nothing timed."""
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "FutureWarning" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "median s" not in proc.stdout
    return lines[0]


def _fake_clone(root: Path, zoo_source: str, family: str = "qarv") -> Path:
    """A folder laid out like the authors' repository, with ``zoo_source`` as its lvae/models/<family>/zoo.py."""
    package = root / "lvae" / "models" / family
    package.mkdir(parents=True)
    for pkg in (root / "lvae", root / "lvae" / "models", package):
        (pkg / "__init__.py").write_text("")
    (package / "zoo.py").write_text(zoo_source)
    return root


def test_missing_folder_is_one_line():
    line = _one_line_error(_run([str(CODING), "--authors", "/nonexistent/lossy-vae", "--repeats", "1"]))
    assert "--authors /nonexistent/lossy-vae: no such folder" in line
    assert "github.com/duanzhiihao/lossy-vae" in line


def test_folder_that_is_not_their_repository_is_one_line(tmp_path):
    line = _one_line_error(_run([str(CODING), "--authors", str(tmp_path), "--repeats", "1"]))
    assert "not a clone of" in line and "lvae/models/qarv/zoo.py" in line


def test_missing_dependency_of_their_code_is_one_line(tmp_path):
    clone = _fake_clone(tmp_path / "lossy-vae", "import timm_is_not_installed_here\n")
    line = _one_line_error(_run([str(CODING), "--authors", str(clone), "--repeats", "1"]))
    assert "needs the Python package 'timm_is_not_installed_here'" in line
    assert "pip install -e '.[bench]'" in line


def test_their_code_without_qarv_base_is_one_line(tmp_path):
    clone = _fake_clone(tmp_path / "lossy-vae", "def qarv_small():\n    pass\n")
    line = _one_line_error(_run([str(CODING), "--authors", str(clone), "--repeats", "1"]))
    assert "has no qarv_base" in line


def test_qres34m_needs_their_qresvae_code(tmp_path):
    """A clone with QARV's code but without QRes-VAE's is refused for --model qres34m, before any worker starts."""
    clone = _fake_clone(tmp_path / "lossy-vae", "def qarv_base():\n    pass\n")
    line = _one_line_error(_run([str(CODING), "--model", "qres34m", "--authors", str(clone), "--repeats", "1"]))
    assert "not a clone of" in line and "lvae/models/qresvae/zoo.py" in line


def test_their_qresvae_code_without_qres34m_is_one_line(tmp_path):
    clone = _fake_clone(tmp_path / "lossy-vae", "def qres17m(lmb=8):\n    pass\n", family="qresvae")
    line = _one_line_error(_run([str(CODING), "--model", "qres34m", "--authors", str(clone), "--repeats", "1"]))
    assert "lvae.models.qresvae.zoo has no qres34m" in line


def test_qres34m_lambda_must_be_a_published_member(tmp_path):
    proc = _run([str(CODING), "--model", "qres34m", "--lmb", "100", "--authors", str(tmp_path), "--repeats", "1"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "qres34m is a fixed-λ family: --lmb must be one of its published λ " \
           "{16, 32, 64, 128, 256, 512, 1024, 2048}, not 100" in proc.stderr


def test_worker_never_imports_this_repositorys_lvae(tmp_path):
    """A PATH without ``lvae`` must not fall back on ours (installed editable in the test env)."""
    proc = _run([str(WORKER), str(tmp_path), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                PYTHONPATH=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip().startswith("@@lvae-bench error ")
    assert "No module named 'lvae'" in proc.stdout and str(REPO) not in proc.stdout


@pytest.fixture(scope="module")
def tiny():
    model = load_fixed_reference_weights(lvae.get_model("qarv_tiny")).eval()
    im = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    lmb = model.default_lmb
    strings = [block[0] for block in model.compress_latents(im, lmb)[0]]
    ours = pack_legacy(lmb, 64, 64, strings)  # the authors' compress_file layout (compress writes it for qarv_base)
    return model, ours, model.decompress(model.compress(im, lmb))


def test_sanity_check_passes_identical_output(tiny, benchmark_script):
    model, ours, decoded = tiny
    check = benchmark_script("coding").authors_check
    lines, identical, same = check(model, ours, decoded, ours[4:], decoded + 2.0**-20, 64, 64)
    assert identical and same
    assert lines[0].startswith("latent strings: identical to this tree's, byte for byte")
    assert lines[-1].startswith("decoded image: max abs diff 9.54e-07") and "(float noise" in lines[-1]
    assert not any(line.startswith("!!!") for line in lines)


def test_sanity_check_fails_loudly_on_other_bytes_or_images(tiny, benchmark_script):
    model, ours, decoded = tiny
    check = benchmark_script("coding").authors_check
    broken = bytearray(ours[4:])
    broken[-3] ^= 0xFF  # inside the last latent string
    lines, identical, same = check(model, ours, decoded, bytes(broken), decoded, 64, 64)
    assert not identical and not same
    assert lines[0].startswith("!!! latent strings: NOT identical")
    lines, identical, same = check(model, ours, decoded, ours[4:], decoded + 1e-3, 64, 64)
    assert identical and not same
    assert lines[-1].startswith("!!! decoded image: max abs diff 1.00e-03") and "MORE THAN FLOAT NOISE" in lines[-1]


@pytest.mark.slow
def test_benchmark_runs_on_a_clone_of_the_authors_code():
    clone = os.environ.get("LVAE_AUTHORS_CLONE")
    if not clone:
        pytest.skip("set LVAE_AUTHORS_CLONE to a clone of https://github.com/duanzhiihao/lossy-vae")
    proc = _run([str(CODING), str(REPO / "tests" / "data" / "conformance_input.png"), "--authors", clone,
                 "--repeats", "1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "authors' qarv_base: ready" in out and "lambda=181.019" in out
    assert "decoded image: max abs diff" in out and "SANITY CHECK FAILED" not in out
    assert out.count("authors' qarv_base ") >= 2 and "vs authors" in out
    # the CPU, its instruction sets and the paths chosen: in the header and with the table
    cpu_lines = [line for line in out.splitlines() if line.startswith("CPU: ")]
    assert len(cpu_lines) == 2 and all("AVX2 " in line and "AVX-512 " in line and "AMX " in line
                                       and "MLP GELU: " in line for line in cpu_lines)


@pytest.fixture(scope="module")
def tiny_qres():
    """A QRes-VAE member, its file in the authors' pickled layout and the image this tree decodes from it."""
    model = load_fixed_reference_weights(lvae.get_model("qres_tiny", lmb=64)).eval()
    im = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    strings = [block[0] for block in model.compress_latents(im)[0]]
    ours = pack_qres_legacy(strings, (1, model.config.dec_widths[0], 1, 2), 64, 128)
    return model, ours, model.decompress(ours)


def test_pickled_sanity_check_passes_identical_output(tiny_qres, benchmark_script):
    model, ours, decoded = tiny_qres
    check = benchmark_script("coding").authors_check
    lines, identical, same = check(model, ours, decoded, ours, decoded + 2.0**-20, 64, 128)  # their whole file
    assert identical and same
    assert lines[0].startswith("latent strings: identical to this tree's, byte for byte (5 strings")
    assert "top feature shape (1, 24, 1, 2), image 64x128" in lines[0]
    assert lines[-1].startswith("decoded image: max abs diff 9.54e-07") and "limit 1e-05" in lines[-1]
    assert not any(line.startswith("!!!") for line in lines)


def test_pickled_sanity_check_fails_loudly_on_other_strings_or_images(tiny_qres, benchmark_script):
    model, ours, decoded = tiny_qres
    check = benchmark_script("coding").authors_check
    f = parse_qres_legacy(ours)
    broken = [*f.strings[:-1], f.strings[-1][:-2] + bytes([f.strings[-1][-2] ^ 0xFF]) + f.strings[-1][-1:]]
    theirs = pack_qres_legacy(broken, f.top_shape, 64, 128)
    lines, identical, same = check(model, ours, decoded, theirs, decoded, 64, 128)
    assert not identical and not same
    assert lines[0].startswith("!!! latent strings: NOT identical to this tree's: 4 of 5 equal")
    assert lines[1].startswith("!!! this tree's decoder ")  # cannot read it, or reads other latent symbols
    lines, identical, same = check(model, ours, decoded, ours, decoded + 2e-5, 64, 128)  # QARV's 1e-4 would pass
    assert identical and not same
    assert lines[-1].startswith("!!! decoded image: max abs diff 2.00e-05") and "limit 1e-05" in lines[-1]
    lines, identical, same = check(model, ours, decoded, b"not a pickle", decoded, 64, 128)
    assert not identical and not same and lines[0].startswith("!!! their bytes are not in their own layout")


def test_authors_worker_writes_their_compress_file_layout(tiny_qres, benchmark_script):
    """The worker's file for their ``compress`` output is this tree's ``format='legacy'`` layout."""
    _, ours, _ = tiny_qres
    f = parse_qres_legacy(ours)
    compressed = [[s] for s in f.strings] + [f.top_shape]  # the list their compress returns
    theirs = benchmark_script("authors_worker").pickled_file(compressed, 64, 128)
    assert parse_qres_legacy(theirs) == f
    if pickle.DEFAULT_PROTOCOL == 4:  # their compress_file pickles with the default; this tree writes protocol 4
        assert theirs == ours


@pytest.mark.slow
def test_benchmark_runs_qres34m_on_a_clone_of_the_authors_code():
    clone = os.environ.get("LVAE_AUTHORS_CLONE")
    if not clone:
        pytest.skip("set LVAE_AUTHORS_CLONE to a clone of https://github.com/duanzhiihao/lossy-vae")
    proc = _run([str(CODING), str(REPO / "tests" / "data" / "conformance_input.png"), "--model", "qres34m",
                 "--authors", clone, "--repeats", "1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "authors' qres34m: ready" in out and "lambda=64" in out
    assert "latent strings: identical to this tree's, byte for byte" in out
    assert "decoded image: max abs diff" in out and "SANITY CHECK FAILED" not in out
    assert out.count("authors' qres34m ") >= 2 and "vs authors" in out
