"""One meaning of "step": the count of optimizer steps done, wherever a step is shown.

The store's last_step (the Live page and the sidebar read it), `gptdash list` and
`gptdash show`, the progress bar and the stop line all say the same number.
"""

import io
import json

from gptcore.config import ModelConfig, TrainConfig, apply_overrides
from jobs import cli, runner
from jobs.foreground import _summarise
from jobs.manager import claim_here
from jobs.progress import Progress


def micro(**overrides) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=30, batch_size=8, lr=3e-3, warmup_steps=2, min_lr=3e-4, eval_interval=10,
        eval_iters=2, log_interval=5, checkpoint_interval=10, sample_tokens=0, device="cpu",
    )
    return apply_overrides(base, overrides)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class StopAfter(Progress):
    """The progress bar on a fake terminal, asking to stop after ``steps`` steps."""

    def __init__(self, steps: int | None):
        super().__init__(Terminal())
        self.steps, self.polls = steps, 0

    def should_stop(self) -> bool:
        self.polls += 1  # polled once after every step
        return self.steps is not None and self.polls >= self.steps


def train(store, cfg, stop_after):
    run_id = runner.create_run(store, cfg)
    claim_here(store, run_id)
    bar = StopAfter(stop_after)
    result = runner.execute_run(store, run_id, extra_callbacks=bar)
    return run_id, result, bar.stream.getvalue()


def listed_steps(capsys, run_id) -> tuple[str, str]:
    capsys.readouterr()
    assert cli.main(["list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.split()[:1] == [str(run_id)])
    assert cli.main(["show", str(run_id)]) == 0
    return line.split()[2], json.loads(capsys.readouterr().out)["steps"]


def test_a_stopped_run_says_the_same_step_everywhere(store, capsys):
    # 7 is off every log, eval and checkpoint boundary: the step just done is index 6.
    run_id, result, bar = train(store, micro(), stop_after=7)
    assert result.status == "stopped" and result.step == 7
    run = store.get_run(run_id)
    assert run.last_step == 7
    assert run.error == "stopped on request at step 7"
    assert "7/30 steps" in bar and "8/30" not in bar
    assert listed_steps(capsys, run_id) == ("7/30", "7/30")
    _summarise(store, run_id, result, interrupted=False)
    assert f"run {run_id} stopped at step 7;" in capsys.readouterr().err


def test_a_completed_run_ends_at_max_steps_of_max_steps(store, capsys):
    run_id, result, bar = train(store, micro(max_steps=12), stop_after=None)
    assert result.status == "completed" and result.step == 12
    assert store.get_run(run_id).last_step == 12
    assert store.get_run(run_id).tokens_seen == 12 * 8 * 16
    # tqdm's default unit printed "13step" here: one past the end, and no space.
    assert "12/12 steps" in bar and "13/12" not in bar and "13step" not in bar
    assert listed_steps(capsys, run_id) == ("12/12", "12/12")
