import pandas as pd

from ui.samples import sample_steps, samples_at


def samples(steps, tag="") -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "prompt": "The ", "text": [f"{tag}{s}" for s in steps],
                         "created_at": None})


def test_steps_common_to_every_run_when_there_are_some():
    frames = {1: samples([300, 200, 100]), 2: samples([200, 100]), 3: samples([100, 200, 250])}
    assert sample_steps(frames) == ([100, 200], True)


def test_every_step_when_none_is_common_or_a_run_has_none():
    assert sample_steps({1: samples([100]), 2: samples([150])}) == ([100, 150], False)
    assert sample_steps({1: samples([100]), 2: samples([])}) == ([100], False)
    assert sample_steps({1: samples([])}) == ([], False)


def test_samples_at_the_nearest_step_earlier_on_a_tie():
    frame = samples([300, 200, 200, 100], tag="s")
    assert samples_at(frame, 200)["text"].tolist() == ["s200", "s200"]
    assert samples_at(frame, 260)["text"].tolist() == ["s300"]
    assert samples_at(frame, 150)["text"].tolist() == ["s100"]
    assert samples_at(samples([]), 100).empty
