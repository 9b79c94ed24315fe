"""The one model contract (lvae.coding.contract.CodingModel) and training one member of a fixed-λ
family (issue 23, points 7 and 8).

The family trained here is a toy registered by this file through the public ``lvae.register_model``
(the tiny QRes-VAE network, members λ ∈ {16, 64}, default 16, random weights): training it needs
no change to lvae. Runs are 2-3 steps on 64×64 crops of tests/data/train_small, validated on
tests/data/kodak3.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lvae
from lvae.coding.contract import CONTRACT_MEMBERS, FORWARD_KEYS, CodingModel, missing_members, require_contract
from lvae.models import registry
from lvae.training import main
from lvae.training.checkpoint import load_training_checkpoint
from lvae.training.validation import validation_lambdas
from lvae.utils.datasets import known_datasets

from test_training_runs import read_log, records, subprocess_env

TESTS = Path(__file__).resolve().parent
LVAE = TESTS.parent / "lvae"
SCRIPT = TESTS.parent / "train-var-rate.py"
TRAIN = TESTS / "data" / "train_small"
KODAK3 = TESTS / "data" / "kodak3"
FAMILY = "contract_toy"
PREFIX = "train-var-rate.py: "


def contract_toy(lmb: float = 16, **overrides):
    """A fixed-λ family of the tiny QRes-VAE network (81,250 parameters)."""
    from lvae.models.zoo import qres_tiny

    return qres_tiny(lmb=lmb, **overrides)


def contract_toy_needs_lmb(lmb: float, **overrides):
    """The same family with no default member."""
    return contract_toy(lmb=lmb, **overrides)


def register_toys() -> None:
    lvae.register_model(lambdas=(16, 64))(contract_toy)
    lvae.register_model(lambdas=(16, 64))(contract_toy_needs_lmb)


@pytest.fixture()
def toy_family(monkeypatch):
    """The toy families, registered for this test only."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    register_toys()


def member_args(runs: Path, name: str, *extra: str) -> list[str]:
    return [
        "--model", FAMILY, "--trainset", str(TRAIN), "--valset", str(KODAK3), "--transform", "crop=64",
        "--batch_size", "2", "--workers", "0", "--device", "cpu", "--runs_dir", str(runs), "--name", name, *extra,
    ]


def said(err: str) -> list[str]:
    return [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip().startswith(PREFIX)]


# -- the contract --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qarv_tiny", "qres_tiny"])
def test_the_built_in_networks_provide_the_contract_and_forward_its_keys(name, one_thread):
    torch.manual_seed(0)
    model = lvae.get_model(name)
    assert missing_members(model) == [] and require_contract(model, name) is model
    out = model(torch.rand(2, 3, 64, 64))
    assert set(FORWARD_KEYS) <= set(out), sorted(set(FORWARD_KEYS) - set(out))
    assert out["kl"].shape == (2, len(model.latent_blocks)) and out["rd"].shape == out["lmb"].shape == (2,)
    assert out["x_hat"].shape == (2, 3, 64, 64) and out["loss"].ndim == out["bpp"].ndim == out["psnr"].ndim == 0
    torch.testing.assert_close(out["loss"], out["rd"].mean())


def test_the_contract_check_names_what_a_model_lacks():
    assert {"max_stride", "lmb_range", "forward", "encode_latents", "member", "state_dict"} <= set(CONTRACT_MEMBERS)
    with pytest.raises(TypeError, match=r"model 'plain' does not provide .*CodingModel\): it lacks "
                                        r"decompress_latents, default_lmb, encode_latents"):
        require_contract(torch.nn.Linear(2, 2), "plain")
    with pytest.raises(TypeError, match="it lacks nn.Module as its base"):
        require_contract(object(), "object")
    assert isinstance(lvae.models.CodingModel, type) and lvae.models.CodingModel is CodingModel


# -- nothing outside lvae/models/ knows the QARV network -----------------------------------------------
QARV_NAMES = {"QARV", "QARVConfig", "LatentVariableBlock", "MAX_STRIDE"}
MAY_KNOW_QARV = ("models/qarv", "models/zoo.py", "models/__init__.py")


def qarv_reaches(root: Path) -> list[str]:
    """Every import of the QARV network module (or of its names through lvae.models), every
    ``cast`` to QARV and every ``import_module('.qarv')`` in ``root``'s modules, those that may
    know it left out; ``if TYPE_CHECKING:`` blocks count too."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(MAY_KNOW_QARV):
            continue
        package = [root.name, *path.relative_to(root).parent.parts]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = {a.name for a in node.names}
                if module.endswith(".qarv") or (module.endswith("models") and names & (QARV_NAMES | {"qarv"})):
                    found.append(f"{where} imports {sorted(names)} from {module}")
            elif isinstance(node, ast.Import):
                found += [f"{where} imports {a.name}" for a in node.names if a.name.endswith(".qarv")]
            elif isinstance(node, ast.Call):
                fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                text = ast.unparse(node.args[0]) if node.args else ""
                if (fn == "cast" and "QARV" in text) or (fn == "import_module" and "qarv" in text):
                    found.append(f"{where} {ast.unparse(node)}")
    return found


def test_no_module_outside_the_models_imports_or_casts_to_qarv():
    assert qarv_reaches(LVAE) == []


def test_the_qarv_check_sees_imports_and_casts(tmp_path):
    pkg = tmp_path / "lvae"
    (pkg / "training").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "models" / "qarv.py").write_text("MAX_STRIDE = 64\n")
    (pkg / "models" / "registry.py").write_text("from .qarv import MAX_STRIDE\n")
    (pkg / "training" / "a.py").write_text(
        "from typing import TYPE_CHECKING, cast\nif TYPE_CHECKING:\n    from ..models.qarv import QARV\n"
        "def f(m):\n    return cast('QARV', m)\n")
    (pkg / "training" / "b.py").write_text("import lvae.models.qarv\nfrom lvae.models import QARV, get_model\n")
    (pkg / "training" / "c.py").write_text("from ..models import get_model\nfrom ..models.registry import x\n")
    assert qarv_reaches(pkg) == [
        "models/registry.py:1 imports ['MAX_STRIDE'] from lvae.models.qarv",
        "training/a.py:3 imports ['QARV'] from lvae.models.qarv",
        "training/a.py:5 cast('QARV', m)",
        "training/b.py:1 imports lvae.models.qarv",
        "training/b.py:2 imports ['QARV', 'get_model'] from lvae.models",
    ]


# -- training one member of a fixed-λ family -------------------------------------------------------------
def test_validation_of_a_member_is_at_its_own_lambda_alone():
    assert validation_lambdas((64.0, 64.0), 8) == [64.0]
    assert validation_lambdas((16.0, 2048.0), 3) == [16.0, pytest.approx(181.019336), 2048.0]


def test_training_a_member_records_its_lambda_and_resumes(tmp_path, one_thread, toy_family, capsys):
    runs = tmp_path / "runs"
    run = runs / "m64"
    assert main(member_args(runs, "m64", "--lmb", "64", "--iterations", "2", "--val_every", "2")) == 0
    assert said(capsys.readouterr().err)[0].startswith(f"{PREFIX}training {FAMILY} λ=64 (81,250 parameters)")
    config = json.loads((run / "config.json").read_text())
    assert (config["lmb"], config["val_lambdas"], config["best_metric"]) == (64.0, [64.0], "loss")
    ckpt = load_training_checkpoint(run / "last.pt")
    assert (ckpt["config"]["lmb"], ckpt["model_args"], ckpt["iteration"]) == (64.0, {}, 2)
    (val,) = records(read_log(run), "val")
    assert (val["lmb"], val["images"], val["bd_rate"], val["best"]) == ([64.0], 3, None, True)

    # the member's own λ, from its saved config: --lmb may be left out, not changed
    assert main(["--resume", str(run), "--iterations", "3", "--lmb", "16"]) == 2
    assert said(capsys.readouterr().err) == [
        f"{PREFIX}error: --lmb cannot change when resuming (the run uses 64.0); start a new run with --weights to "
        "change it"]
    assert main(["--resume", str(run), "--iterations", "3", "--val_every", "3"]) == 0
    ckpt = load_training_checkpoint(run / "last.pt")
    assert (ckpt["config"]["lmb"], ckpt["iteration"]) == (64.0, 3)
    assert [r["lmb"] for r in records(read_log(run), "val")] == [[64.0], [64.0]]

    # what the run wrote is the member of λ=64: lmb=64 builds it, the default member (16) does not fit its λ
    for f in ("last_ema.pt", "best.pt"):
        model = lvae.get_model(FAMILY, lmb=64, pretrained=str(run / f))
        assert (model.lmb_range, model.default_lmb, model.lambdas) == ((64.0, 64.0), 64.0, (64.0,))
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    assert model(x)["lmb"].tolist() == [64.0]


def test_the_default_member_is_written_down(tmp_path, one_thread, toy_family):
    runs = tmp_path / "runs"
    assert main(member_args(runs, "d", "--iterations", "1", "--valset", "none")) == 0
    assert json.loads((runs / "d" / "config.json").read_text())["lmb"] == 16.0
    assert load_training_checkpoint(runs / "d" / "last.pt")["config"]["lmb"] == 16.0


def test_one_lambda_gives_no_bd_rate_and_says_so(tmp_path, one_thread, toy_family, monkeypatch, capsys):
    """Validated on a known data set with a VTM anchor, a member (one λ) has no BD-rate: one line
    says so, and best.pt follows the validation loss."""
    root = tmp_path / "data"
    (root / known_datasets["kodak"]).parent.mkdir(parents=True, exist_ok=True)
    (root / known_datasets["kodak"]).symlink_to(KODAK3, target_is_directory=True)
    monkeypatch.setenv("LVAE_DATA_ROOT", str(root))
    runs = tmp_path / "runs"
    assert main(member_args(runs, "k", "--lmb", "64", "--iterations", "1", "--valset", "kodak")) == 0
    lines = said(capsys.readouterr().err)
    assert lines[1] == (f"{PREFIX}validating at λ = 64 only: no BD-rate against the kodak anchor (it takes a curve of "
                        "4 λ or more); best.pt keeps the lowest validation loss")
    (val,) = records(read_log(runs / "k"), "val")
    assert val["bd_rate"] is None and val["best"] and (runs / "k" / "best.pt").is_file()
    assert json.loads((runs / "k" / "config.json").read_text())["best_metric"] == "loss"


@pytest.mark.parametrize(
    "model, extra, words",
    [
        ("qarv_tiny", ["--lmb", "64"], "--lmb chooses the member of a fixed-λ family, but qarv_tiny is a "
                                       "variable-rate model that trains every λ of its range at once: leave --lmb out"),
        ("contract_toy_needs_lmb", [], "contract_toy_needs_lmb is a fixed-λ family: choose the member to train with "
                                       "--lmb (its published members: λ ∈ {16, 64})"),
        (FAMILY, ["--model_args", "lmb=64"], "give the λ of a fixed-λ family's member with --lmb, not in --model_args"),
        (FAMILY, ["--transform", "crop=96"],
         f"the crop size must be a positive multiple of 64 (the stride of {FAMILY}), got 96"),
        ("qarv_tiny", ["--transform", "crop=100"], "the crop size must be a positive multiple of 64 (the stride of "
                                                   "qarv_tiny), got 100"),
    ],
)
def test_a_wrong_member_or_crop_exits_2_in_one_line_writing_nothing(tmp_path, toy_family, capsys, model, extra,
                                                                    words):
    runs = tmp_path / "runs"
    assert main(member_args(runs, "x", "--iterations", "1", "--model", model, *extra)) == 2
    assert said(capsys.readouterr().err) == [f"{PREFIX}error: {words}"]
    assert not runs.exists()


def test_torchrun_trains_a_member_on_two_cpu_processes(tmp_path):
    """torchrun --nproc_per_node 2 with gloo (~20 s): the member trains with identical weights on
    both ranks and validates at its λ over the two ranks' shards."""
    launch = tmp_path / "launch.py"
    launch.write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom test_model_contract import register_toys\n"
        "register_toys()\nfrom lvae.training import main\nraise SystemExit(main())\n"
    )
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launch),
           *member_args(runs, "ddp", "--lmb", "64", "--iterations", "2", "--batch_size", "1")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(runs / "ddp")
    assert [r["world_size"] for r in records(log, "start")] == [2]
    (check,) = records(log, "checkpoint")
    assert len(check["checksums"]) == 2 and check["identical"]
    (val,) = records(log, "val")
    assert (val["lmb"], val["images"]) == ([64.0], 3)
    assert load_training_checkpoint(runs / "ddp" / "last.pt")["config"]["lmb"] == 64.0
