"""The CPU code path chosen at start-up (where the MLPs' GELU runs) and what says it:
``lvae.utils.system``, ``lvae.models.layers.gelu_path``, ``lvae info --system``.

Both GELU paths compute the exact GELU; a file coded on one decodes on the other (the cross-process
tests of test_portable_decoding.py run the AVX2 decoder, which takes the "separate" path, against an
encoder that takes "fused" on AVX-512 machines; here both paths run in one process on any machine)."""
from __future__ import annotations

import pytest
import torch

from lvae.cli.main import main as cli_main
from lvae.models import layers
from lvae.utils import system
from lvae.utils.system import CpuInfo, parse_cpuinfo

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""


@pytest.fixture()
def restore_choice():
    yield
    layers.set_gelu_path(None)
    layers._cpu_gelu_path.cache_clear()
    system.cpu_info.cache_clear()


def test_cpuinfo_is_parsed():
    assert parse_cpuinfo(CPUINFO) == ("AMD EPYC 7B12", ("AVX2",))
    text = CPUINFO.replace("bmi2", "bmi2 avx512f avx512_bf16 amx_tile")
    assert parse_cpuinfo(text)[1] == ("AVX2", "AVX-512", "AVX512-BF16", "AMX")
    assert parse_cpuinfo("") == (None, ())


@pytest.mark.parametrize("isas, limit, expected", [
    (("AVX2",), None, False),
    (("AVX2", "AVX-512"), None, True),
    (("AVX2", "AVX-512"), ("ONEDNN_MAX_CPU_ISA", "AVX2"), False),
    (("AVX2", "AVX-512"), ("ONEDNN_MAX_CPU_ISA", "avx2_vnni"), False),
    (("AVX2", "AVX-512"), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16"), True),
    (("AVX2", "AVX-512"), ("DNNL_MAX_CPU_ISA", "ALL"), True),
    (("AVX2",), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"), False),  # a limit cannot add what the CPU lacks
    (None, None, None),
    (None, ("ONEDNN_MAX_CPU_ISA", "SSE41"), False),
])
def test_onednn_avx512(isas, limit, expected):
    assert CpuInfo("x", 2, isas, limit).onednn_avx512 is expected


def test_cpu_info_reads_the_onednn_limit(monkeypatch, restore_choice):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    system.cpu_info.cache_clear()
    info = system.cpu_info()
    assert info.onednn_limit == ("ONEDNN_MAX_CPU_ISA", "AVX2") and info.onednn_avx512 is False
    assert "oneDNN limited by ONEDNN_MAX_CPU_ISA=AVX2" in info.describe()


@pytest.mark.parametrize("isas, expected", [(("AVX2",), "separate"), (("AVX2", "AVX-512"), "fused")])
def test_gelu_path_follows_the_cpu(monkeypatch, restore_choice, isas, expected):
    monkeypatch.setattr(layers, "cpu_info", lambda: CpuInfo("x", 2, isas))
    layers._cpu_gelu_path.cache_clear()
    assert layers.gelu_path() == expected
    assert layers.cpu_paths()["MLP GELU"].startswith(expected)
    other = "fused" if expected == "separate" else "separate"
    layers.set_gelu_path(other)
    assert layers.gelu_path() == other and "forced" in layers.cpu_paths()["MLP GELU"]
    layers.set_gelu_path(None)
    assert layers.gelu_path() == expected


def test_unknown_gelu_path_is_refused():
    with pytest.raises(ValueError, match="fused, separate"):
        layers.set_gelu_path("tanh")


@pytest.mark.parametrize("chunked", [False, True])
def test_both_gelu_paths_compute_the_block_alike(monkeypatch, restore_choice, chunked):
    torch.manual_seed(0)
    block = layers.ConvNeXtBlockAdaLN(32, embed_dim=16, kernel_size=3).eval()
    with torch.no_grad():
        block.gamma.fill_(0.5)  # the published init (1e-6) would hide the MLP
    x, emb = torch.randn(1, 32, 24, 40), torch.randn(1, 16)
    if chunked:  # rows in chunks, as the large stages of qarv_base run
        monkeypatch.setattr(layers, "_MLP_CHUNK_BYTES", 0)
        monkeypatch.setattr(layers, "_MLP_CHUNK_ROWS", 100)
    with torch.enable_grad():
        reference = block(x, emb).detach()  # autograd on: the plain modules (nn.Linear, nn.GELU)
    for path in layers.GELU_PATHS:
        layers.set_gelu_path(path)
        with torch.no_grad():
            out = block(x, emb)
        assert torch.allclose(out, reference, rtol=1e-5, atol=1e-5), (path, (out - reference).abs().max())


def test_a_file_coded_on_one_path_decodes_on_the_other(tiny, restore_choice):
    torch.manual_seed(1)
    im = torch.rand(1, 3, 128, 192)
    decoded = {}
    for coder in layers.GELU_PATHS:
        layers.set_gelu_path(coder)
        data = tiny.compress(im, 256.0)
        for decoder in layers.GELU_PATHS:
            layers.set_gelu_path(decoder)
            decoded[coder, decoder] = tiny.decompress(data)
    for (coder, decoder), image in decoded.items():
        assert (image - decoded[coder, coder]).abs().max() < 1e-5, (coder, decoder)


def test_info_system_says_the_choice(monkeypatch, restore_choice, capsys):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    system.cpu_info.cache_clear()
    layers._cpu_gelu_path.cache_clear()
    assert cli_main(["info", "--system"]) == 0
    out = capsys.readouterr().out
    assert "oneDNN limited by ONEDNN_MAX_CPU_ISA=AVX2" in out
    assert "MLP GELU:         separate" in out
    assert "bfloat16 encoder: " in out  # oneDNN itself read the limit at start-up: not set here


def test_info_needs_a_file_or_system(capsys):
    assert cli_main(["info"]) == 2
    assert "give one or more FILEs, or --system" in capsys.readouterr().err
