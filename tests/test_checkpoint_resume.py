"""Saving and restoring a training run's state (Trainer.save_checkpoint / _load_state), in process and
without training further: every field of last.pt goes back where it came from. Fast (~2 s); also the
mutation run's subset for the checkpoint and resume code. The end-to-end bit-identity of a resumed
run is tests/test_training_runs.py::test_resumed_run_is_bit_identical_to_an_uninterrupted_one."""
import random
import warnings

import pytest
import torch

from lvae.training.checkpoint import LAST, LAST_EMA, load_training_checkpoint
from lvae.training.config import ConfigError, parse_args
from lvae.training.data import ImageFolderCrops
from lvae.training.distributed import DistContext
from lvae.training.trainer import Trainer

from test_training_runs import assert_identical, tiny_args

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _trainer(runs, name, *extra, explicit_resume=None):
    argv = ["--resume", explicit_resume, "--runs_dir", str(runs), *extra] if explicit_resume else \
        tiny_args(runs, name, "--valset", "none", "--batch_size", "2", *extra)
    cfg, explicit = parse_args(argv)
    return Trainer(cfg, CPU, explicit)


@pytest.fixture()
def saved(tmp_path, one_thread):
    """A run trained 3 steps, with some state of every kind, saved as last.pt."""
    t = _trainer(tmp_path / "runs", "r", "--iterations", "10")
    batches = t._batches()
    for _ in range(3):
        t.train_step(batches)
        t.iteration += 1
    t.guard.history.extend([1.5, 2.5])
    t.best = {"metric": "loss", "value": 0.25, "iteration": 2}
    t.wandb_id = "abc123"
    torch.manual_seed(77)
    random.seed(78)
    t.save_checkpoint()
    t.log.close()
    return t, tmp_path / "runs" / "r"


def test_last_pt_holds_every_field(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    assert set(ckpt) == {"model", "ema", "optimizer", "scaler", "spike_guard", "iteration", "epoch", "batch_in_epoch",
                         "best", "rng", "world_size", "config", "model_name", "model_args", "wandb_id", "lvae_version"}
    assert (ckpt["iteration"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (3, 0, 3)
    assert ckpt["spike_guard"] == {"history": list(t.guard.history)} and len(t.guard.history) == 5
    assert ckpt["best"] == {"metric": "loss", "value": 0.25, "iteration": 2}
    assert (ckpt["wandb_id"], ckpt["world_size"], ckpt["scaler"]) == ("abc123", 1, None)
    assert (ckpt["model_name"], ckpt["model_args"], ckpt["config"]["iterations"]) == ("qarv_tiny", {}, 10)
    assert len(ckpt["rng"]) == 1 and torch.equal(ckpt["rng"][0]["torch"], torch.get_rng_state())
    assert_identical(ckpt["model"], t.model.state_dict())
    assert_identical(ckpt["ema"], t.ema.state_dict())
    assert_identical(ckpt["optimizer"], t.optimizer.state_dict())
    assert_identical(torch.load(run / LAST_EMA, weights_only=True), {"model": t.ema.state_dict()})


def test_resume_restores_every_field(saved):
    t, run = saved
    expected_torch, expected_python = torch.rand(4), random.random()  # what the saved streams give next
    torch.manual_seed(0)
    random.seed(0)
    r = _trainer(run.parent, None, explicit_resume="r")
    assert (r.iteration, r.epoch, r.batch_in_epoch) == (3, 0, 3)
    assert list(r.guard.history) == list(t.guard.history)
    assert r.best == {"metric": "loss", "value": 0.25, "iteration": 2} and r.wandb_id == "abc123"
    assert_identical(r.model.state_dict(), t.model.state_dict())
    assert_identical(r.ema.state_dict(), t.ema.state_dict())
    assert_identical(r.optimizer.state_dict(), t.optimizer.state_dict())
    assert torch.equal(torch.rand(4), expected_torch) and random.random() == expected_python
    assert r.cfg.iterations == 10 and r.resume_path == run / LAST
    r.log.close()


def test_resume_with_another_process_count_starts_a_new_epoch(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    ckpt["world_size"] = 2
    ckpt["rng"] = ckpt["rng"] * 2
    ckpt["epoch"] = 2
    torch.save(ckpt, run / LAST)
    with pytest.warns(RuntimeWarning, match="resuming with 1 process\\(es\\) instead of 2: a new data epoch"):
        r = _trainer(run.parent, None, explicit_resume="r")
    assert (r.iteration, r.epoch, r.batch_in_epoch) == (3, 3, 0)
    # new streams, seeded from the seed, the rank and the iteration
    expected = torch.Generator().manual_seed(0 + 0 + 1_000_003 * 3)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=expected))
    assert random.random() == random.Random(0 + 0 + 1_000_003 * 3).random()
    r.log.close()


def test_resume_without_ema_state_or_with_another_best_metric(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    ckpt["ema"] = None
    ckpt["best"] = {"metric": "bd_rate", "value": -3.0, "iteration": 1}
    del ckpt["spike_guard"], ckpt["wandb_id"]
    torch.save(ckpt, run / LAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = _trainer(run.parent, None, explicit_resume="r")
    assert_identical(r.ema.state_dict(), r.model.state_dict())  # a fresh EMA of the restored weights
    assert (r.ema.decay, r.ema.warmup) == (r.cfg.ema_decay, r.cfg.ema_warmup) == (0.9999, 1e4)
    assert r.best == {"metric": "loss", "value": None, "iteration": None}  # another metric: not comparable
    assert list(r.guard.history) == [] and r.wandb_id is None
    r.log.close()


def test_checkpoint_logs_the_ranks_weight_checksums(saved, monkeypatch):
    import json

    from lvae.training.checkpoint import param_checksum

    t, run = saved
    t.log = type(t.log)(run, None)  # reopen the run's log (the fixture closed it)
    mine = param_checksum(t.model)
    monkeypatch.setattr(type(t.ctx), "all_gather_object", lambda self, obj: [obj, obj])
    t.save_checkpoint()
    monkeypatch.setattr(type(t.ctx), "all_gather_object",
                        lambda self, obj: [obj, "0" * 16] if isinstance(obj, str) else [obj, obj])
    with pytest.warns(RuntimeWarning,
                      match=rf"^model weights differ between ranks at iteration 3: \['{mine}', '0{{16}}'\]$"):
        t.save_checkpoint()
    t.log.close()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    checks = [r for r in records if r["type"] == "checkpoint"]
    assert [(c["iteration"], c["checksums"], c["identical"]) for c in checks] == [
        (3, [mine], True), (3, [mine, mine], True), (3, [mine, "0" * 16], False)]


def test_a_run_without_ema_saves_no_ema(tmp_path, one_thread):
    t = _trainer(tmp_path / "runs", "noema", "--iterations", "5", "--no-ema")
    t.save_checkpoint()
    t.log.close()
    ckpt = load_training_checkpoint(tmp_path / "runs" / "noema" / LAST)
    assert ckpt["ema"] is None and ckpt["scaler"] is None
    assert not (tmp_path / "runs" / "noema" / LAST_EMA).exists()
    r = _trainer(tmp_path / "runs", None, explicit_resume="noema")
    assert r.ema is None
    r.log.close()


def test_resume_of_an_older_checkpoint_without_position_fields(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    del ckpt["epoch"], ckpt["batch_in_epoch"]
    torch.save(ckpt, run / LAST)
    r = _trainer(run.parent, None, explicit_resume="r")
    assert (r.iteration, r.epoch, r.batch_in_epoch) == (3, 0, 0)
    r.log.close()


def test_resume_with_rng_states_of_another_count_starts_afresh(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    ckpt["rng"] = ckpt["rng"] * 2  # one process, but two saved streams: not this layout
    torch.save(ckpt, run / LAST)
    with pytest.warns(RuntimeWarning, match="a new data epoch and new random streams begin"):
        r = _trainer(run.parent, None, explicit_resume="r")
    assert (r.epoch, r.batch_in_epoch) == (1, 0)
    r.log.close()


def test_resume_names_last_pt_when_its_weights_do_not_fit(saved):
    from lvae.errors import CheckpointError

    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    del ckpt["model"]["bias"]
    torch.save(ckpt, run / LAST)
    with pytest.raises(CheckpointError,
                       match=r"^last\.pt does not fit model 'qarv_tiny': 1 missing key\(s\), first: bias$"):
        _trainer(run.parent, None, explicit_resume="r")


def test_resume_refuses_a_checkpoint_of_another_model(saved):
    t, run = saved
    ckpt = load_training_checkpoint(run / LAST)
    ckpt["model_args"] = {"embed_dim": 32}
    torch.save(ckpt, run / LAST)
    with pytest.raises(ConfigError, match="was written for another model than its config names"):
        _trainer(run.parent, None, explicit_resume="r")


def test_batches_continue_the_epoch_where_it_stopped(tmp_path, one_thread, monkeypatch):
    """Batch k of a fresh run is the first batch after a resume at k (mid-epoch, at an epoch's
    start, in a later epoch). Images are replaced by their index in the data set to follow them."""
    monkeypatch.setattr(ImageFolderCrops, "__getitem__", lambda self, i: torch.tensor(float(i)))
    t = _trainer(tmp_path / "runs", "b", "--iterations", "20")
    per_epoch = len(t.dataset) // 2  # batches of 2, the last partial one dropped
    gen = t._batches()
    straight = [next(gen) for _ in range(2 * per_epoch + 3)]
    assert (t.epoch, t.batch_in_epoch) == (2, 3)
    assert sorted(torch.cat(straight[:per_epoch]).tolist()) == list(range(len(t.dataset)))  # one epoch: each once
    assert torch.cat(straight[:per_epoch]).tolist() != torch.cat(straight[per_epoch:2 * per_epoch]).tolist()
    t.log.close()
    for k in (3, per_epoch, per_epoch + 1, 2 * per_epoch + 1):
        r = _trainer(tmp_path / "runs", f"b{k}", "--iterations", "20")
        r.epoch, r.batch_in_epoch = divmod(k, per_epoch)
        resumed = r._batches()
        assert [next(resumed).tolist() for _ in range(2)] == [b.tolist() for b in straight[k:k + 2]], k
        r.log.close()


# -- the helpers of lvae/training/checkpoint.py -------------------------------------------------------
def test_atomic_save_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    from lvae.training import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"a": torch.ones(2)}, path)
    checkpoint.atomic_save({"a": torch.zeros(3)}, path)  # replaces
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_save({"a": torch.ones(1)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is gone
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))  # the old one is intact


def test_training_checkpoint_must_hold_its_fields(tmp_path):
    from lvae.errors import CheckpointError
    from lvae.training.checkpoint import _REQUIRED

    assert _REQUIRED == ("model", "optimizer", "iteration", "config", "model_name", "model_args")
    full = {k: {} for k in _REQUIRED}
    torch.save(full, tmp_path / "ok.pt")
    assert load_training_checkpoint(tmp_path / "ok.pt") == full
    torch.save({"model": {}, "iteration": 3}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match=r"part\.pt is not a training checkpoint of train-var-rate\.py \(missing: "
                                              r"optimizer, config, model_name, model_args\); to start from a model's "
                                              r"weights use --weights$"):
        load_training_checkpoint(tmp_path / "part.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError,
                       match=r"\(missing: model, optimizer, iteration, config, model_name, model_args\)"):
        load_training_checkpoint(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    try:
        torch.load(tmp_path / "junk.pt", weights_only=True)
    except Exception as exc:  # the reader's own error, named in ours
        kind = type(exc).__name__
    with pytest.raises(CheckpointError, match=rf"^cannot read training checkpoint .*junk\.pt: {kind}: "):
        load_training_checkpoint(tmp_path / "junk.pt")


class _CreatesFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_training_checkpoints_are_read_without_running_pickled_code(tmp_path):
    from lvae.errors import CheckpointError
    from lvae.training.checkpoint import _REQUIRED

    marker = tmp_path / "pickle-ran"
    torch.save({**{k: {} for k in _REQUIRED}, "model": _CreatesFile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        load_training_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_resume_target_may_be_a_file_a_folder_or_a_name(tmp_path):
    from lvae.training.checkpoint import find_resume_checkpoint

    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"x")
    (run / "other.pt").write_bytes(b"x")
    assert find_resume_checkpoint(str(run / "other.pt"), "unused") == run / "other.pt"
    assert find_resume_checkpoint(str(run), "unused") == run / "last.pt"
    assert find_resume_checkpoint("exp", tmp_path / "runs") == run / "last.pt"
    with pytest.raises(FileNotFoundError, match=r"^nothing to resume at 'gone\.pt': looked for gone\.pt$"):
        find_resume_checkpoint("gone.pt", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match=rf"^nothing to resume at 'nope': looked for nope/last\.pt and "
                                                rf"{tmp_path}/runs/nope/last\.pt$"):
        find_resume_checkpoint("nope", tmp_path / "runs")


def test_param_checksum_covers_names_and_every_value():
    from lvae.training.checkpoint import param_checksum

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert param_checksum(a) == param_checksum(b) and len(param_checksum(a)) == 16
    int(param_checksum(a), 16)
    renamed = torch.nn.Sequential(a)
    assert param_checksum(renamed) != param_checksum(a)  # names are part of it
    with torch.no_grad():
        b.weight[1, 2] += 1e-3
    assert param_checksum(a) != param_checksum(b)


def test_cuda_rng_state_is_saved_and_restored_when_there_is_one(monkeypatch):
    """The CUDA branch, without a GPU: torch.cuda's calls are recorded."""
    from lvae.training import checkpoint

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: calls.append(state))
    state = checkpoint.rng_state()
    assert torch.equal(state["cuda"], torch.tensor([7], dtype=torch.uint8))
    checkpoint.set_rng_state(state)
    assert len(calls) == 1 and calls[0] is state["cuda"]
    del state["cuda"]
    checkpoint.set_rng_state(state)  # saved without CUDA: nothing to restore there
    assert len(calls) == 1
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in checkpoint.rng_state()  # CUDA never used: no state to save
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint.set_rng_state({**state, "cuda": torch.tensor([1], dtype=torch.uint8)})  # resumed without a GPU
    assert len(calls) == 1


def test_rng_state_holds_torch_and_python_streams():
    from lvae.training.checkpoint import rng_state, set_rng_state

    torch.manual_seed(5)
    random.seed(6)
    state = rng_state()
    assert set(state) == {"torch", "python"} or (torch.cuda.is_available() and "cuda" in state)
    a, b = torch.rand(2), random.random()
    state["python"] = list(state["python"])  # as a weights_only load gives it back
    state["python"][1] = list(state["python"][1])
    set_rng_state(state)
    assert torch.equal(torch.rand(2), a) and random.random() == b
