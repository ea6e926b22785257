import pandas as pd

from ui.events import CROWDING, EVENT_STYLES, event_traces, events_table, is_loss


def curves(run_ids=(1,), n=101) -> pd.DataFrame:
    rows = [{"run_id": r, "key": k, "step": s, "value": (3.0 if k == "train/loss" else 4.0)
             - s / 100 + r, "wall_time": 1000.0 + s}
            for r in run_ids for k in ("train/loss", "val/loss") for s in range(0, n, 10)]
    frame = pd.DataFrame(rows)
    frame["x"] = frame["step"] * 64  # a tokens axis
    return frame


def events(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["run_id", "step", "kind", "message", "wall_time"])


SPIKE = (1, 25, "spike", "loss 9.1 at step 25 is 8.2σ above its recent mean", 1.0)
ROLLBACK = (1, 25, "rollback", "rolled back to step 20, lr halved", 2.0)


def test_one_marker_trace_per_kind_on_the_loss_curve_with_the_message_on_hover():
    traces = event_traces(events([SPIKE, ROLLBACK]), curves())
    assert [t["name"] for t in traces] == ["roll-back", "spike"]
    spike = traces[1]
    assert spike["mode"] == "markers" and spike["marker"]["symbol"] == "triangle-up"
    # On the train-loss curve, interpolated between steps 20 (2.8+1) and 30 (2.7+1).
    assert list(spike["x"]) == [25.0] and abs(spike["y"][0] - 3.75) < 1e-9
    assert "8.2σ above its recent mean" in spike["text"][0]
    assert "step 25" in spike["text"][0] and "spike" in spike["hovertemplate"]
    assert not spike["showlegend"]  # the events table is the legend


def test_best_checkpoints_sit_on_the_val_curve_small_and_faint_and_last_in_the_legend():
    best = (1, 40, "best_checkpoint", "val loss 3.6, best so far", 3.0)
    traces = event_traces(events([best, SPIKE]), curves())
    assert [t["name"] for t in traces] == ["spike", "best checkpoint"]
    star = traces[1]
    assert abs(star["y"][0] - (4.0 - 0.4 + 1)) < 1e-9  # the val-loss curve
    assert star["marker"]["size"] < EVENT_STYLES["spike"].size
    assert star["marker"]["opacity"] < 1
    # Where several runs share a chart, they are only listed.
    assert [t["name"] for t in event_traces(events([best, SPIKE]), curves(),
                                            leave_out=CROWDING)] == ["spike"]


def test_markers_follow_the_charts_x_column_and_name_the_run_when_several():
    both = events([SPIKE, (2, 50, "early_stop", "no gain in 3 evaluations", 4.0)])
    traces = event_traces(both, curves((1, 2)), names={1: "alpha", 2: "beta"}, x="x")
    by_name = {t["name"]: t for t in traces}
    assert list(by_name["spike"]["x"]) == [25 * 64.0]
    assert by_name["early stop"]["text"][0].startswith("beta: step 50")


def test_events_off_the_curve_or_without_one_are_left_out_and_text_is_escaped():
    late = (1, 500, "nan", "loss is nan", 1.0)
    other_run = (7, 10, "spike", "x", 1.0)
    assert event_traces(events([late, other_run]), curves()) == []
    assert event_traces(events([]), curves()) == []
    odd = (1, 10, "mystery", "<b>bold</b>", 1.0)
    [trace] = event_traces(events([odd]), curves())
    assert trace["name"] == "event" and "&lt;b&gt;" in trace["text"][0]


def test_events_table_lists_only_the_latest_best_checkpoint_per_run():
    bests = [(1, s, "best_checkpoint", f"val loss at {s}", float(s)) for s in (10, 20, 30)]
    table = events_table(events([*bests, SPIKE]))
    assert list(table.columns) == ["mark", "step", "kind", "message"]
    assert table.values.tolist() == [[":red[▲]", 25, "spike", SPIKE[3]],
                                     [":green[★]", 30, "best checkpoint", "val loss at 30"]]
    two = events_table(events([SPIKE, (2, 5, "nan", "loss is nan", 1.0)]), {1: "alpha"})
    assert two["run"].tolist() == ["alpha", "run 2"]
    assert events_table(events([])).empty


def test_is_loss():
    assert is_loss("val/loss") and is_loss("train/loss") and is_loss("loss")
    assert not is_loss("lr") and not is_loss("grad_norm")
