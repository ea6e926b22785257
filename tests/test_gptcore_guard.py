"""The guard: spikes and NaNs are spotted, rolled back past and skipped; best.pt is the best."""

import math
import random
import statistics

import numpy as np
import pytest
import torch
from test_gptcore_trainer import Recorder, micro, run

from gptcore.checkpoint import BEST_CHECKPOINT_NAME, checkpoint_in, load_checkpoint
from gptcore.data import TokenData, builtin_text, load_data
from gptcore.guard import GRAD_NORM_RATIO, Anomaly, Guard, MovingWindow, SpikeDetector
from gptcore.model import GPT
from gptcore.snapshot import SnapshotRing, copy_state
from gptcore.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def noisy(n: int, mean: float = 2.0, sd: float = 0.05, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [mean + rng.gauss(0, sd) for _ in range(n)]


def feed(det: SpikeDetector, losses, grad_norms=None) -> list[Anomaly]:
    grad_norms = grad_norms or [1.0] * len(losses)
    pairs = enumerate(zip(losses, grad_norms, strict=True))
    found = [det.check(i, loss, gn) for i, (loss, gn) in pairs]
    return [a for a in found if a is not None]


# ---- the detector on synthetic series ------------------------------------------------------
def test_a_noisy_falling_loss_is_never_a_spike():
    # falling from 5.5 like a real run, with noise; the early fast fall is the hard part
    losses = [2.0 + 3.5 * math.exp(-i / 40) + x for i, x in enumerate(noisy(2000, 0, 0.08))]
    grads = [abs(g) for g in noisy(2000, 1.0, 0.3, seed=1)]
    assert feed(SpikeDetector(threshold=6, window=50), losses, grads) == []


def test_a_loss_far_above_the_recent_mean_is_a_spike_with_a_sentence():
    det = SpikeDetector(threshold=6, window=50)
    losses = [1.9, 2.1] * 50 + [7.91]  # mean 2.0, standard deviation 0.1
    found = feed(det, losses)
    assert found == [Anomaly("spike", 100,
                             "loss 7.91 at step 100 is 59.1σ above the recent mean 2.00")]


def test_the_threshold_is_in_standard_deviations_of_the_window():
    base = noisy(50, sd=0.1)
    mean, sd = np.mean(base), np.std(base)
    just_below, just_above = mean + 5.9 * sd, mean + 6.1 * sd
    assert feed(SpikeDetector(threshold=6, window=50), base + [just_below]) == []
    assert len(feed(SpikeDetector(threshold=6, window=50), base + [just_above])) == 1


def test_a_flat_loss_needs_a_real_jump_not_a_tiny_one():
    # zero spread: the floor (2% of the mean) keeps a 1% wobble from being 'infinite sigma'
    assert feed(SpikeDetector(threshold=6, window=10), [2.0] * 20 + [2.02]) == []
    assert len(feed(SpikeDetector(threshold=6, window=10), [2.0] * 20 + [2.5])) == 1


def test_nan_and_infinity_are_caught_from_the_first_step():
    for loss, gn, text in [(math.nan, 1.0, "loss became NaN at step 0"),
                           (math.inf, 1.0, "loss became infinite at step 0"),
                           (2.0, math.inf, "grad norm became infinite at step 0")]:
        found = feed(SpikeDetector(threshold=6, window=50), [loss], [gn])
        assert [(a.kind, a.message) for a in found] == [("nan", text)]


def test_an_exploding_grad_norm_is_a_spike_but_a_noisy_one_is_not():
    losses, grads = noisy(60), [abs(g) for g in noisy(60, 1.0, 0.2)]
    assert feed(SpikeDetector(6, 50), losses + [2.0], grads + [0.5 * GRAD_NORM_RATIO]) == []
    found = feed(SpikeDetector(6, 50), losses + [2.0], grads + [3 * GRAD_NORM_RATIO])
    assert [a.kind for a in found] == ["spike"]
    assert found[0].message.startswith("grad norm 60 at step 60 is ")


def test_a_spike_stays_out_of_the_window_and_the_window_is_bounded():
    det = SpikeDetector(threshold=6, window=10)
    feed(det, noisy(30))
    before = det.state_dict()
    assert len(before["losses"]) == 10
    assert det.check(30, 50.0, 1.0) is not None
    assert det.state_dict() == before


def test_the_moving_window_agrees_with_statistics_after_a_long_stream():
    values = noisy(5000, mean=5.0, sd=0.3)
    window = MovingWindow(50, values)
    mean, std = window.mean_std()
    assert mean == pytest.approx(statistics.fmean(values[-50:]), rel=1e-12)
    assert std == pytest.approx(statistics.pstdev(values[-50:]), rel=1e-9)
    assert list(window.values) == values[-50:]


def test_detector_state_round_trips():
    det = SpikeDetector(threshold=6, window=10)
    feed(det, noisy(15))
    other = SpikeDetector(threshold=6, window=10)
    other.load_state_dict(det.state_dict())
    assert other.check(15, 2.01, 1.0) == det.check(15, 2.01, 1.0) is None
    assert other.state_dict() == det.state_dict()


def test_guard_lowers_the_lr_only_when_the_same_kind_repeats_and_gives_up_after_the_max():
    guard = Guard(threshold=6, window=10, max_rollbacks=3, lr_factor=0.5)
    spike, nan = Anomaly("spike", 1, "s"), Anomaly("nan", 2, "n")
    assert guard.respond(spike).lr_reduced is False
    assert guard.respond(nan).lr_reduced is False  # a different kind is not a repeat
    assert guard.lr_scale == 1.0
    third = guard.respond(spike)
    assert third.lr_reduced and not third.give_up and guard.lr_scale == 0.5
    assert guard.rollbacks == 3
    assert guard.respond(spike).give_up


def test_guard_state_round_trips():
    guard = Guard(threshold=6, window=10, max_rollbacks=3, lr_factor=0.5)
    for i, loss in enumerate(noisy(12)):
        guard.check(i, loss, 1.0)
    guard.respond(Anomaly("spike", 1, "s"))
    guard.respond(Anomaly("spike", 2, "s"))
    again = Guard(threshold=6, window=10, max_rollbacks=3, lr_factor=0.5)
    again.load_state_dict(guard.state_dict())
    assert again.state_dict() == guard.state_dict()
    assert (again.rollbacks, again.lr_scale) == (2, 0.5)


# ---- the snapshot ring ---------------------------------------------------------------------
def _tiny_model_and_adam():
    torch.manual_seed(0)
    cfg = micro()
    model = GPT(cfg.model.__class__(**{**cfg.model.__dict__, "vocab_size": 256}))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _adam_step(model, opt):
    x = torch.randint(0, 256, (2, 16))
    model(x, x).backward()
    opt.step()
    opt.zero_grad()


def test_copy_state_is_independent_and_reuses_matching_buffers():
    src = {"a": torch.ones(3), "b": [torch.zeros(2), 5], "c": "text"}
    first = copy_state(src)
    src["a"].add_(1)
    assert torch.equal(first["a"], torch.ones(3)) and first["b"][1] == 5 and first["c"] == "text"
    second = copy_state(src, first)
    assert second["a"] is first["a"] and torch.equal(second["a"], torch.full((3,), 2.0))


def test_tied_weights_are_copied_once():
    model, _ = _tiny_model_and_adam()
    state = model.state_dict()
    assert state["tok_emb.weight"] is not state["out_head.weight"]  # two views, one memory
    copy = copy_state(state)
    assert copy["tok_emb.weight"] is copy["out_head.weight"]


def test_restoring_a_snapshot_twice_gives_the_same_state_both_times():
    model, opt = _tiny_model_and_adam()
    _adam_step(model, opt)
    ring = SnapshotRing()
    ring.take(1, model, opt, {})
    saved = copy_state((model.state_dict(), opt.state_dict()))
    for _ in range(2):  # Adam updates its step counts in place: the snapshot must not see it
        _adam_step(model, opt)
        ring.restore(ring.last_before(2), model, opt)
        now = (model.state_dict(), opt.state_dict())
        for a, b in zip(_tensors(saved), _tensors(now), strict=True):
            assert torch.equal(a, b)


def test_the_ring_keeps_two_and_drops_snapshots_at_or_after_the_bad_step():
    model, opt = _tiny_model_and_adam()
    ring = SnapshotRing()
    for step in (0, 10, 20):
        ring.take(step, model, opt, {})
    assert ring.steps == [10, 20]
    assert ring.last_before(20).step == 10
    assert ring.steps == [10]
    assert ring.last_before(5) is None


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from _tensors(tree[key])
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)


# ---- training that heals itself -----------------------------------------------------------
def diverging(**overrides):
    """SGD with momentum at lr 5 and no clipping: NaN within ten steps."""
    return micro(**{"optimizer": "sgd", "lr": 5.0, "momentum": 0.9, "grad_clip": 0.0,
                    "warmup_steps": 0, "schedule": "constant", "max_steps": 60,
                    "eval_interval": 20, "checkpoint_interval": 20, "guard_interval": 5,
                    "guard_lr_factor": 0.1, "guard_max_rollbacks": 4, **overrides})


def test_a_diverging_run_fails_with_todays_nan_message_when_the_guard_is_off(tmp_path):
    result, cb = run(diverging(guard=False), tmp_path)
    assert result.status == "failed"
    assert result.reason.startswith("loss became NaN at step ")
    assert result.reason.endswith("; no checkpoint was saved before it: lower lr or raise "
                                  "warmup_steps")
    assert not [e for e in cb.events if e[1] != "best_checkpoint"]


def test_a_diverging_run_completes_with_the_guard_on(tmp_path):
    result, cb = run(diverging(), tmp_path)
    assert result.status == "completed", result.reason
    kinds = [kind for _, kind, _ in cb.events]
    assert kinds.count("rollback") >= 1 and "lr_reduced" in kinds
    assert result.rollbacks == kinds.count("rollback")
    val = cb.metrics["val/loss"]
    assert math.isfinite(val[60]) and val[60] < val[0] - 1.0
    rollback = next(m for _, kind, m in cb.events if kind == "rollback")
    assert "rolled back to step 0 and skipped 5 batches (roll-back 1 of 4)" in rollback


def test_after_max_rollbacks_the_run_fails_saying_what_to_change(tmp_path):
    result, cb = run(diverging(guard_max_rollbacks=1), tmp_path)
    assert result.status == "failed"
    assert "after 1 roll-backs (guard_max_rollbacks 1): lower lr (it is 5)" in result.reason
    assert "set grad_clip" in result.reason
    assert result.checkpoint is None  # nothing broken was saved


def test_guard_state_and_best_val_survive_a_resume(tmp_path):
    cfg = diverging(max_steps=40)
    stopped, first = run(cfg, tmp_path, Recorder(stop_at=25))
    assert stopped.status == "stopped" and stopped.rollbacks >= 2
    resumed, second = run(cfg, tmp_path, resume=True)
    assert resumed.status == "completed"
    assert resumed.rollbacks == stopped.rollbacks
    scaled = first.metrics["lr"][stopped.step - 1]  # constant schedule: lr x the guard's scale
    assert scaled < cfg.lr
    assert set(second.metrics["lr"].values()) == {scaled}
    every_val = {**first.metrics["val/loss"], **second.metrics["val/loss"]}
    assert resumed.best_val_loss == pytest.approx(min(every_val.values()))


# ---- a block of garbage in the data --------------------------------------------------------
SPIKE_STEP = 57


def spiky(corpus, **overrides):
    # Batches of 16 x 32 tokens: quiet enough that the garbage batch stands out at ~10σ.
    return micro(**{"corpus": str(corpus), "batch_size": 16, "context_length": 32,
                    "max_steps": 80, "eval_interval": 40, "checkpoint_interval": 25,
                    "guard_interval": 10, "guard_window": 20, **overrides})


@pytest.fixture
def garbage_corpus(tmp_path, monkeypatch):
    """A text corpus with a block of control characters in it, and the training batch drawn
    at SPIKE_STEP served from that block. Returns the corpus path and a list that gets one
    entry each time the garbage is served.

    The garbage is keyed to the data generator's position, not to a call count, so a
    roll-back that rewound the data would draw it again.
    """
    rng = random.Random(0)
    text = builtin_text()[:60_000].encode("ascii", "ignore").decode()
    garbage = "".join(chr(rng.choice([*range(1, 9), *range(14, 32)])) for _ in range(4000))
    path = tmp_path / "corpus.txt"
    path.write_text(text[:30_000] + garbage + text[30_000:], encoding="utf-8")
    cfg = spiky(path)
    data = load_data(cfg.corpus, "byte", cfg.val_fraction, tmp_path / "cache")
    # The longest stretch of garbage in the training ids (the split may hold back a piece).
    is_garbage = np.isin(np.asarray(data.train), np.asarray([*range(1, 9), *range(14, 32)]))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_garbage.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    block = (int(starts[longest]), int(ends[longest]))
    assert block[1] - block[0] > 1000
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(SPIKE_STEP):
        data.batch("train", cfg.batch_size, cfg.model.context_length, gen)
    target = gen.get_state()

    served: list[int] = []
    real = TokenData.batch

    def batch_with_garbage(self, split, batch_size, context_length, generator):
        hit = split == "train" and torch.equal(generator.get_state(), target)
        x, y = real(self, split, batch_size, context_length, generator)
        if not hit:
            return x, y
        served.append(1)
        starts = torch.linspace(block[0], block[1] - context_length - 1, batch_size).long()
        windows = np.stack([self.train[s: s + context_length + 1] for s in starts.tolist()])
        w = torch.from_numpy(windows.astype(np.int64))
        return w[:, :-1], w[:, 1:]

    monkeypatch.setattr(TokenData, "batch", batch_with_garbage)
    return path, served


def test_garbage_in_the_data_is_a_spike_rolled_back_past_and_not_replayed(tmp_path,
                                                                         garbage_corpus):
    corpus, served = garbage_corpus
    result, cb = run(spiky(corpus), tmp_path)
    assert result.status == "completed" and result.rollbacks == 1
    spikes = [(s, m) for s, kind, m in cb.events if kind == "spike"]
    assert [s for s, _ in spikes] == [SPIKE_STEP]
    rollback = next(m for _, kind, m in cb.events if kind == "rollback")
    assert rollback.endswith("rolled back to step 50 and skipped 10 batches (roll-back 1 of 3)")
    assert served == [1]  # the garbage batch was skipped, never drawn again
    # The recorded curve (a later value for a step replaces the earlier one, as in the
    # database) goes on from before the spike, with nothing near the spike after it.
    loss = cb.metrics["train/loss"]
    before = [loss[s] for s in range(30, 50)]
    after = [loss[s] for s in range(50, 80)]
    spike_loss = float(spikes[0][1].split()[1])
    assert spike_loss > max(before) + 0.5
    assert max(after) < spike_loss - 0.5
    assert statistics.fmean(after) < statistics.fmean(before) + 0.05


def test_a_rollback_restores_the_checkpoint_exactly_and_skips_the_data(tmp_path,
                                                                     garbage_corpus):
    corpus, _ = garbage_corpus
    seen = {}

    class Check(Recorder):
        def on_event(self, step, kind, message):
            super().on_event(step, kind, message)
            if kind == "spike":
                seen["data_at_spike"] = trainer.data_gen.get_state().clone()
            if kind == "rollback":
                seen["step"] = trainer.step
                seen["model"] = copy_state(trainer.model.state_dict())
                seen["optimizer"] = copy_state(trainer.optimizer.state_dict())
                seen["data"] = trainer.data_gen.get_state().clone()
                seen["torch_rng"] = torch.get_rng_state()
                seen["checkpoint"] = load_checkpoint(tmp_path / "ckpt" / "latest.pt")

    trainer = Trainer(spiky(corpus), checkpoint_dir=tmp_path / "ckpt",
                      cache_dir=tmp_path / "cache", callbacks=Check())
    assert trainer.run().status == "completed"
    ckpt = seen["checkpoint"]
    assert ckpt["step"] == seen["step"] == 50  # the checkpoint on disk at step 50
    for name, tensor in ckpt["model"].items():
        assert torch.equal(tensor, seen["model"][name]), name
    for a, b in zip(_tensors(ckpt["optimizer"]), _tensors(seen["optimizer"]), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(seen["torch_rng"], ckpt["rng"]["torch"])
    # The data position is not rewound: the batches drawn since step 50 are skipped.
    assert torch.equal(seen["data"], seen["data_at_spike"])
    assert not torch.equal(seen["data"], ckpt["rng"]["data"])


# ---- the best checkpoint --------------------------------------------------------------------
class WeightsAtEachEval(Recorder):
    """Keeps a copy of the model's weights at every evaluation."""

    def __init__(self, trainer_ref, **kw):
        super().__init__(**kw)
        self.trainer_ref = trainer_ref
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_metrics(self, step, metrics):
        super().on_metrics(step, metrics)
        if "val/loss" in metrics:
            self.weights[step] = copy_state(self.trainer_ref[0].model.state_dict())


def _train_keeping_weights(cfg, tmp_path):
    ref: list[Trainer] = []
    cb = WeightsAtEachEval(ref)
    ref.append(Trainer(cfg, checkpoint_dir=tmp_path / "ckpt", cache_dir=tmp_path / "cache",
                       callbacks=cb))
    return ref[0].run(), cb


def _assert_best_pt_is_the_best_eval(result, cb):
    val = cb.metrics["val/loss"]
    best_step = min(val, key=val.get)
    best = load_checkpoint(result.best_checkpoint)
    assert result.best_checkpoint.name == BEST_CHECKPOINT_NAME
    assert best["step"] == best_step and best["extra"]["val_loss"] == val[best_step]
    assert result.best_val_loss == val[best_step]
    for name, tensor in best["model"].items():
        assert torch.equal(tensor, cb.weights[best_step][name]), name
    events = [s for s, kind, _ in cb.events if kind == "best_checkpoint"]
    assert events[-1] == best_step
    return best_step


def test_best_pt_holds_the_weights_of_the_lowest_val_loss(tmp_path):
    result, cb = _train_keeping_weights(micro(max_steps=40), tmp_path)
    assert result.status == "completed"
    _assert_best_pt_is_the_best_eval(result, cb)


def test_early_stopping_leaves_best_pt_equal_to_the_best_evaluation(tmp_path):
    # A tiny corpus learnt by heart: val loss turns up, and early stopping ends the run.
    corpus = tmp_path / "small.txt"
    corpus.write_text(builtin_text()[:4000], encoding="utf-8")
    cfg = micro(corpus=str(corpus), val_fraction=0.25, lr=1e-2, schedule="constant",
                max_steps=400, eval_interval=10, early_stopping_patience=3)
    result, cb = _train_keeping_weights(cfg, tmp_path)
    assert result.status == "completed" and "early stopping" in result.reason
    best_step = _assert_best_pt_is_the_best_eval(result, cb)
    assert best_step < result.step  # the last weights are not the best ones
    assert [kind for _, kind, _ in cb.events][-1] == "early_stop"


def test_checkpoint_in_picks_best_or_falls_back_to_latest(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"x")
    assert checkpoint_in(tmp_path, "best") == tmp_path / "latest.pt"
    (tmp_path / "best.pt").write_bytes(b"x")
    assert checkpoint_in(tmp_path, "best") == tmp_path / "best.pt"
    assert checkpoint_in(tmp_path) == tmp_path / "latest.pt"
    with pytest.raises(Exception, match="neither 'latest' nor 'best'"):
        checkpoint_in(tmp_path, "newest")
