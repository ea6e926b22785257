"""The training loop: optimizers learn, resume is exact, stops and failures are clean."""

import math
import time

import pytest
import torch

from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.config import ModelConfig, TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.model import GPT
from gptcore.optim import build_optimizer
from gptcore.trainer import Trainer, TrainerCallbacks, train


def micro(**overrides) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=30, batch_size=8, lr=3e-3, warmup_steps=5, min_lr=3e-4, eval_interval=10,
        eval_iters=2, log_interval=5, checkpoint_interval=10, sample_tokens=8, device="cpu",
    )
    return apply_overrides(base, overrides)


class Recorder(TrainerCallbacks):
    def __init__(self, stop_at: int | None = None):
        self.metrics: dict[str, dict[int, float]] = {}
        self.samples, self.checkpoints, self.statuses, self.events = [], [], [], []
        self.stop_at = stop_at
        self.step = 0
        self.polls = 0
        self.flushes = 0

    def on_metrics(self, step, metrics):
        self.step = max(self.step, step)
        for k, v in metrics.items():
            self.metrics.setdefault(k, {})[step] = v

    def on_sample(self, step, prompt, text):
        self.samples.append((step, prompt, text))

    def on_checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def on_status(self, status, message=None):
        self.statuses.append((status, message))

    def on_event(self, step, kind, message):
        self.events.append((step, kind, message))

    def flush(self):
        self.flushes += 1

    def should_stop(self):
        # The trainer polls once after every step, so this counts steps.
        self.polls += 1
        return self.stop_at is not None and self.polls >= self.stop_at


def run(cfg, tmp_path, cb=None, **kw):
    cb = cb or Recorder()
    result = train(cfg, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache",
                   callbacks=cb, **kw)
    return result, cb


def test_a_run_reports_every_metric_sample_and_checkpoint(tmp_path):
    result, cb = run(micro(), tmp_path)
    assert result.status == "completed" and result.step == 30
    for key in ("train/loss", "val/loss", "val/ppl", "lr", "grad_norm", "tokens_per_sec",
                "step_time_ms", "tokens_seen"):
        assert key in cb.metrics, key
    assert sorted(cb.metrics["train/loss"]) == list(range(30))
    assert sorted(cb.metrics["val/loss"]) == [0, 10, 20, 30]
    # Each evaluation, its sample included, is timed for the ETA and the estimates.
    assert sorted(cb.metrics["eval_time_ms"]) == [0, 10, 20, 30]
    assert all(t > 0 for t in cb.metrics["eval_time_ms"].values())
    assert [s for s, _, _ in cb.samples] == [0, 10, 20, 30]
    assert [s for s, _ in cb.checkpoints] == [10, 20, 30]
    assert cb.statuses[-1] == ("completed", None)
    assert cb.flushes >= 4
    assert (tmp_path / "ckpt" / "latest.pt").is_file()


def test_training_lowers_val_loss(tmp_path):
    _, cb = run(micro(max_steps=60, eval_interval=30), tmp_path)
    val = cb.metrics["val/loss"]
    assert val[60] < 0.8 * val[0]


@pytest.mark.parametrize("optimizer, lr", [("adamw", 3e-3), ("adam", 3e-3), ("sgd", 0.3),
                                           ("rmsprop", 1e-3), ("muon", 3e-3)])
def test_each_optimizer_overfits_one_batch(optimizer, lr):
    torch.manual_seed(0)
    cfg = micro(optimizer=optimizer, lr=lr, weight_decay=0.0)
    model = GPT(ModelConfig(**{**cfg.model.__dict__, "vocab_size": 256}))
    opt = build_optimizer(model, cfg, "cpu")
    x, y = torch.randint(0, 256, (4, 16)), torch.randint(0, 256, (4, 16))
    first = model(x, y).item()
    for _ in range(40):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, y).item() < 0.7 * first, optimizer


def test_adamw_does_not_decay_biases_norms_or_embeddings():
    model = GPT(ModelConfig(vocab_size=256, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    opt = build_optimizer(model, micro(), "cpu")
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert id(model.tok_emb.weight) not in decayed and id(model.pos_emb.weight) not in decayed
    assert id(model.blocks[0].norm1.weight) not in decayed
    assert id(model.blocks[0].ff.fc.bias) not in decayed
    assert id(model.blocks[0].ff.fc.weight) in decayed


def test_resume_continues_the_same_curve(tmp_path):
    cfg = micro(drop_rate=0.1)  # dropout makes the RNG state part of what must be restored
    _, full = run(cfg, tmp_path / "a")
    stopped, first = run(cfg, tmp_path / "b", Recorder(stop_at=15))
    assert stopped.status == "stopped" and stopped.step == 15
    resumed, second = run(cfg, tmp_path / "b", resume=True)
    assert resumed.status == "completed"
    full_curve = full.metrics["train/loss"]
    joined = {**first.metrics["train/loss"], **second.metrics["train/loss"]}
    assert sorted(joined) == sorted(full_curve)
    for step, value in full_curve.items():
        assert joined[step] == pytest.approx(value, abs=1e-5), step
    joined_val = {**first.metrics["val/loss"], **second.metrics["val/loss"]}
    assert sorted(joined_val) == sorted(full.metrics["val/loss"]) == [0, 10, 20, 30]
    for step, value in full.metrics["val/loss"].items():
        assert joined_val[step] == pytest.approx(value, abs=1e-5), step


def _ready_trainer(cfg, tmp_path) -> Trainer:
    trainer = Trainer(cfg, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache")
    trainer.setup()
    return trainer


@pytest.mark.parametrize("fixed", [True, False])
def test_with_fixed_eval_the_same_weights_give_the_same_val_loss_at_every_step(tmp_path,
                                                                               fixed):
    trainer = _ready_trainer(micro(fixed_eval=fixed), tmp_path)
    losses = []
    for step in (0, 10, 20):
        trainer.step = step
        losses.append(trainer.evaluate())
    if fixed:
        assert losses[0] == losses[1] == losses[2]
    else:  # the random draw: new batches at each evaluation
        assert len({loss["val"] for loss in losses}) == 3


def test_the_fixed_eval_set_is_the_same_for_every_seed(tmp_path):
    a = _ready_trainer(micro(seed=1), tmp_path)
    b = _ready_trainer(micro(seed=2), tmp_path)
    b.model.load_state_dict(a.model.state_dict())
    assert a.evaluate() == b.evaluate()
    b.cfg = micro(seed=2, fixed_eval=False)
    assert a.evaluate()["val"] != b.evaluate()["val"]


def test_fixed_eval_leaves_the_training_batches_as_they_were(tmp_path):
    _, fixed = run(micro(), tmp_path / "a")
    _, drawn = run(micro(fixed_eval=False), tmp_path / "b")
    assert fixed.metrics["train/loss"] == drawn.metrics["train/loss"]
    assert fixed.metrics["val/loss"] != drawn.metrics["val/loss"]


def test_stop_request_ends_within_one_step_with_a_checkpoint(tmp_path):
    result, cb = run(micro(max_steps=1000), tmp_path, Recorder(stop_at=7))
    assert result.status == "stopped"
    assert result.step == 7
    assert cb.checkpoints[-1][0] == 7
    assert load_checkpoint(result.checkpoint)["step"] == 7


def test_a_stop_while_the_corpus_is_tokenized_ends_stopped_and_caches_nothing(
        tmp_path, monkeypatch):
    monkeypatch.setattr("gptcore.trainer.STOP_POLL_AFTER_S", 0.0)  # as if it took minutes
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Words for a corpus never tokenized before. " * 2000)
    prepared = []

    class StopWhilePreparing(Recorder):
        def on_prepare(self, progress):
            prepared.append(progress.bytes_read)

    result, _ = run(micro(corpus=str(corpus)), tmp_path, StopWhilePreparing(stop_at=1))
    assert prepared and result.status == "stopped" and result.step == 0
    assert result.reason == "stopped while its corpus was being tokenized, before its first step"
    assert not list((tmp_path / "cache").glob("tokens-*/manifest.json"))
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.fixture
def nan_from_call_23(monkeypatch):
    """The training loss turns NaN from the 23rd forward pass with targets on."""
    real = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, label_smoothing=0.0):
        out = real(self, idx, targets, label_smoothing)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] >= 23:
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def test_nan_loss_fails_with_the_step_and_last_good_checkpoint(tmp_path, nan_from_call_23):
    result, cb = run(micro(max_steps=200, guard=False), tmp_path)
    assert result.status == "failed"
    assert result.reason == "loss became NaN at step 22; last good checkpoint at step 20"
    assert cb.statuses[-1] == ("failed", result.reason)
    assert load_checkpoint(result.checkpoint)["step"] == 20  # the NaN weights were not saved
    assert max(cb.metrics["train/loss"]) < 22


def test_nan_with_early_stopping_on_ends_stopped(tmp_path, nan_from_call_23):
    result, _ = run(micro(max_steps=200, early_stopping_patience=3, guard=False), tmp_path)
    assert result.status == "stopped" and "loss became NaN at step 22" in result.reason


def test_early_stopping_after_patience_evals(tmp_path):
    # lr so small that val loss cannot improve by the threshold between evals
    result, cb = run(micro(lr=1e-9, min_lr=0, max_steps=500, eval_interval=5,
                           early_stopping_patience=2), tmp_path)
    assert result.status == "completed"
    assert "early stopping" in result.reason
    assert result.step < 500


def test_fine_tuning_with_frozen_blocks_keeps_them_unchanged(tmp_path):
    base, _ = run(micro(), tmp_path / "base")
    parent = load_checkpoint(base.checkpoint)["model"]
    cfg = micro(init_from=str(base.checkpoint), freeze_blocks=1, freeze_embeddings=True)
    tuned, _ = run(cfg, tmp_path / "tuned", init_checkpoint=base.checkpoint)
    child = load_checkpoint(tuned.checkpoint)["model"]
    for name, tensor in parent.items():
        if name.startswith(("blocks.0.", "tok_emb", "pos_emb", "out_head")):
            assert torch.equal(tensor, child[name]), name
    assert not torch.equal(parent["blocks.1.ff.fc.weight"], child["blocks.1.ff.fc.weight"])


def test_fine_tuning_from_a_different_shape_is_a_clear_failure(tmp_path):
    base, _ = run(micro(max_steps=10), tmp_path / "base")
    cfg = micro(emb_dim=64, init_from=str(base.checkpoint))
    result, _ = run(cfg, tmp_path / "tuned", init_checkpoint=base.checkpoint)
    assert result.status == "failed" and "model shape differs" in result.reason


def test_a_crash_in_the_step_ends_failed_with_the_reason(tmp_path, monkeypatch):
    cb = Recorder()
    trainer = Trainer(micro(max_steps=30), checkpoint_dir=tmp_path / "c",
                      cache_dir=tmp_path / "cache", callbacks=cb)
    calls = {"n": 0}
    real_batch = Trainer._batch

    def flaky(self, split, gen):
        calls["n"] += 1
        if split == "train" and calls["n"] > 40:
            raise RuntimeError("boom in the data path")
        return real_batch(self, split, gen)

    monkeypatch.setattr(Trainer, "_batch", flaky)
    result = trainer.run()
    assert result.status == "failed"
    assert "RuntimeError" in result.reason and "boom" in result.reason
    assert cb.metrics["train/loss"]  # what was reported before the crash is kept


def test_out_of_memory_gives_a_message_about_batch_size(tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(GPT, "forward", oom)
    result, _ = run(micro(batch_size=8), tmp_path)
    assert result.status == "failed"
    assert "out of memory at batch_size 8, context_length 16: lower batch_size" in result.reason


def test_checkpoint_save_is_atomic_and_disk_full_is_clear(tmp_path, monkeypatch):
    model = GPT(ModelConfig(vocab_size=256, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    path = tmp_path / "latest.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, config=micro(), rng={})
    good = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GptdashError, match="No space left on device"):
        save_checkpoint(path, model=model, optimizer=None, step=2, config=micro(), rng={})
    assert path.read_bytes() == good  # the previous checkpoint is untouched
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GptdashError, match="corrupt or not a PyTorch file"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(GptdashError, match="not a gptdash checkpoint"):
        load_checkpoint(foreign)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gptdash-checkpoint-1", "x": _RunsCode()}, evil)
    with pytest.raises(GptdashError, match="refused to load evil.pt"):
        load_checkpoint(evil)
    assert "this must never run" not in capsys.readouterr().out


def test_metrics_are_finite_numbers(tmp_path):
    _, cb = run(micro(max_steps=10), tmp_path)
    for key, series in cb.metrics.items():
        assert all(math.isfinite(v) for v in series.values()), key


class SlowSaves(Recorder):
    """A checkpoint that takes two seconds to save (a slow disk, a busy database)."""

    def on_checkpoint(self, step, path):
        super().on_checkpoint(step, path)
        time.sleep(2.0)


def test_throughput_leaves_out_checkpoint_saves_as_it_leaves_out_evaluations(tmp_path):
    """The Live tile showed about a seventh of the real tokens/s after each checkpoint: the
    report after a save counted the save as training time."""
    result, cb = run(micro(max_steps=8, log_interval=2, checkpoint_interval=4,
                           eval_interval=100), tmp_path, SlowSaves())
    assert result.status == "completed"
    assert [step for step, _ in cb.checkpoints] == [4, 8]
    reports = cb.metrics["step_time_ms"]
    assert sorted(reports) == [2, 4, 6, 8]
    # Past the first report (which holds the first steps' start-up), a step of this model
    # takes milliseconds; the report after the 2 s save at step 4 showed 1,000 ms per step.
    assert max(ms for step, ms in reports.items() if step > 2) < 700, reports


class _Abandoned(Exception):
    abandons_run = True  # as storage's ClaimLost: the run is another process's now


class _LosesItsRun(TrainerCallbacks):
    """Lets the first ``allowed`` checkpoints replace the last one, then says the run is no
    longer this trainer's, as a fenced owner whose claim was taken does."""

    def __init__(self, allowed: int):
        self.allowed = allowed

    def before_checkpoint(self):
        if self.allowed == 0:
            raise _Abandoned("taken")
        self.allowed -= 1


def test_a_trainer_that_lost_its_run_replaces_no_checkpoint_file(tmp_path):
    cfg = micro(max_steps=40, checkpoint_interval=10, eval_interval=1000)
    # Its step-0 best.pt and its step-10 latest.pt go; then the run is taken.
    trainer = Trainer(cfg, checkpoint_dir=tmp_path / "c", cache_dir=tmp_path / "cache",
                      callbacks=_LosesItsRun(allowed=2))
    with pytest.raises(_Abandoned):
        trainer.run()
    assert load_checkpoint(tmp_path / "c" / "latest.pt")["step"] == 10
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["best.pt", "latest.pt"]


def test_a_save_whose_commit_is_refused_leaves_the_last_file_and_no_temporary(tmp_path):
    model = GPT(ModelConfig(vocab_size=256, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    path = tmp_path / "latest.pt"
    save_checkpoint(path, model=model, optimizer=None, step=1, config=micro(), rng={})

    def refuse():
        raise _Abandoned("taken")

    with pytest.raises(_Abandoned):
        save_checkpoint(path, model=model, optimizer=None, step=2, config=micro(), rng={},
                        before_commit=refuse)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
