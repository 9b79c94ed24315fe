"""Pretrained-weight resolution and strict loading, with fake checkpoints in tmp_path."""
import pytest
import torch

import lvae
from lvae.errors import CheckpointError, WeightsUnavailableError
from lvae.models.fixed_weights import load_fixed_reference_weights
from lvae.models.registry import Weights
from lvae.models.weights import resolve_weights


@pytest.fixture()
def source():
    return load_fixed_reference_weights(lvae.get_model("qarv_tiny"))


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if ".discrete_gaussian._" not in k)


@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("filled", [True, False])
def test_load_local_checkpoint_both_shapes(tmp_path, source, wrapped, filled):
    if filled:
        source.compress_mode(True)
    sd = source.state_dict()
    assert (sd["dec_blocks.0.discrete_gaussian._quantized_cdf"].numel() > 0) == filled
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd, "iteration": 5} if wrapped else sd, path)
    model = lvae.get_model("qarv_tiny", pretrained=str(path))
    assert _same_params(model, source)
    # the loaded model codes (tables are rebuilt by compress_mode whatever the file held)
    model.eval().compress_mode(True)
    strings, grid = model.compress_latents(torch.rand(1, 3, 64, 64), 100)
    assert len(strings) == 4


def test_filled_tables_load_into_model_with_filled_tables(tmp_path, source):
    source.compress_mode(True)
    path = tmp_path / "c.pt"
    torch.save(source.state_dict(), path)
    target = lvae.get_model("qarv_tiny").compress_mode(True)
    from lvae.models.weights import load_checkpoint_state_dict, load_state_dict_strict

    load_state_dict_strict(target, load_checkpoint_state_dict(path))
    assert _same_params(target, source)


def test_ddp_prefix_is_stripped(tmp_path, source):
    path = tmp_path / "ddp.pt"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    assert _same_params(lvae.get_model("qarv_tiny", pretrained=path), source)


def test_partial_checkpoint_is_refused_naming_keys(tmp_path, source):
    sd = source.state_dict()
    del sd["bias"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save({"model": sd}, path)
    expected = r"1 missing key\(s\), first: bias.*1 unexpected key\(s\), first: extra.weight"
    with pytest.raises(CheckpointError, match=expected):
        lvae.get_model("qarv_tiny", pretrained=str(path))


def test_wrong_model_checkpoint_is_refused(tmp_path, source):
    path = tmp_path / "tiny.pt"
    torch.save({"model": source.state_dict()}, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        lvae.get_model("qarv_tiny", pretrained=str(path), embed_dim=32)


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        lvae.get_model("qarv_tiny", pretrained=str(path))
    path2 = tmp_path / "list.pt"
    torch.save([1, 2, 3], path2)
    with pytest.raises(CheckpointError, match="neither a state dict"):
        lvae.get_model("qarv_tiny", pretrained=str(path2))


class _CreatesFile:
    """Unpickling this calls ``open(marker, 'w')``: the file exists afterwards iff the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("wrapped", [True, False])
def test_pickled_code_is_not_executed(tmp_path, wrapped):
    marker = tmp_path / "pickle-ran"
    payload = _CreatesFile(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": payload} if wrapped else {"bias": payload}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):  # refused by the safe unpickler
        lvae.get_model("qarv_tiny", pretrained=str(path))
    assert not marker.exists(), "loading the checkpoint ran code from its pickle"
    # the payload is live: an unsafe load does run it (so the assertion above can fail)
    loaded = torch.load(path, weights_only=False)
    next(iter(loaded.values())).close()
    assert marker.exists()


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        lvae.get_model("qarv_tiny", pretrained=str(tmp_path / "none.pt"))


def test_model_without_weights_says_so():
    with pytest.raises(WeightsUnavailableError, match="no published weights"):
        lvae.get_model("qarv_tiny", pretrained=True)


def test_hub_cache_is_used_and_honours_torch_home(tmp_path, monkeypatch, source):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    weights = Weights(filename="fake-tiny.pt", url="http://127.0.0.1:9/fake-tiny.pt")
    cache = tmp_path / "th" / "hub" / "checkpoints" / "fake-tiny.pt"
    cache.parent.mkdir(parents=True)
    torch.save({"model": source.state_dict()}, cache)
    assert resolve_weights("qarv_tiny", weights) == cache


def test_offline_with_empty_cache_gives_instructions(tmp_path, monkeypatch):
    """qarv_base with pretrained=True, no cached file and no network: a clear, actionable error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    from lvae.models import registry

    entry = registry._MODELS["qarv_base"]
    # NOTE: point the URL at a closed local port so the test never touches the internet.
    offline = Weights(filename=entry.weights.filename, url="http://127.0.0.1:9/" + entry.weights.filename)
    monkeypatch.setitem(registry._MODELS, "qarv_base", registry._Entry(entry.fn, offline))
    with pytest.raises(WeightsUnavailableError) as info:
        lvae.get_model("qarv_base", pretrained=True)
    msg = str(info.value)
    assert "could not download" in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "qarv_base-2022-dec-12.pt") in msg
    assert "pretrained='/path/qarv_base-2022-dec-12.pt'" in msg
    assert not list((tmp_path / "th").rglob("*.pt"))  # nothing half-downloaded left behind


def test_published_url_is_the_authors():
    w = lvae.models.model_weights("qarv_base")
    assert w.url.endswith("/qarv_base-2022-dec-12.pt") and w.filename == "qarv_base-2022-dec-12.pt"


@pytest.fixture()
def cached_tiny(tmp_path, monkeypatch, source):
    """qarv_tiny's fixed weights saved in a fresh torch hub cache (TORCH_HOME in tmp_path)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cache = tmp_path / "th" / "hub" / "checkpoints" / "fake-tiny.pt"
    cache.parent.mkdir(parents=True)
    torch.save({"model": source.state_dict()}, cache)
    return cache


def test_damaged_weights_file_is_refused_by_its_sha256(cached_tiny):
    from lvae.models.weights import file_sha256

    cache = cached_tiny
    good = Weights(filename="fake-tiny.pt", url="http://127.0.0.1:9/fake-tiny.pt", sha256=file_sha256(cache))
    assert resolve_weights("qarv_tiny", good) == cache
    bad = Weights(filename="fake-tiny.pt", url="http://127.0.0.1:9/fake-tiny.pt", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="is damaged: its SHA-256 is not 0000"):
        resolve_weights("qarv_tiny", bad)


def test_recorded_sha256_is_checked_on_the_loaded_bytes(tmp_path, cached_tiny, source):
    """Weights with a recorded SHA-256 are loaded from the very bytes that were checked; a file
    whose digest differs is refused before anything in it is unpickled."""
    from lvae.models.weights import file_sha256, load_pretrained

    cache = cached_tiny
    good = Weights(filename="fake-tiny.pt", url="http://127.0.0.1:9/fake-tiny.pt", sha256=file_sha256(cache))
    model = lvae.get_model("qarv_tiny")
    load_pretrained(model, "qarv_tiny", good, True)
    assert _same_params(model, source)

    marker = tmp_path / "pickle-ran"
    torch.save({"model": _CreatesFile(marker)}, cache)  # replaced by a file with code in its pickle
    with pytest.raises(CheckpointError, match="is damaged: its SHA-256 is not"):
        load_pretrained(lvae.get_model("qarv_tiny"), "qarv_tiny", good, True)
    assert not marker.exists()
