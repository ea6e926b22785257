import json

import pytest

from gptcore.config import PRESETS, TrainConfig
from gptcore.errors import GptdashError
from ui.config_diff import config_from_upload, config_json_bytes, differing_params, display_value


def test_only_differing_params_sorted_with_runs_as_columns():
    a = TrainConfig().flat()
    b = {**a, "lr": 3e-4, "n_layers": 6}
    c = {**a, "lr": 1e-3}
    table = differing_params({"run-a": a, "run-b": b, "run-c": c})
    assert list(table.index) == ["lr", "n_layers"]
    assert table.index.name == "parameter"
    assert list(table.columns) == ["run-a", "run-b", "run-c"]
    assert table.loc["lr"].tolist() == ["0.001", "0.0003", "0.001"]
    assert table.loc["n_layers"].tolist() == ["4", "6", "4"]


def test_missing_keys_count_as_differing():
    table = differing_params({"a": {"lr": 0.1, "x": True}, "b": {"lr": 0.1}})
    assert list(table.index) == ["x"]
    assert table.loc["x"].tolist() == ["True", "—"]


def test_presets_differ_and_identical_configs_do_not():
    flat = {name: cfg.flat() for name, cfg in PRESETS.items()}
    assert "emb_dim" in differing_params(flat).index
    assert differing_params({"a": flat["tiny"], "b": dict(flat["tiny"])}).empty
    assert differing_params({}).empty


def test_display_value():
    assert display_value(0.0003) == "0.0003" and display_value(1e-10) == "1e-10"
    assert display_value(None) == "—" and display_value("gelu") == "gelu"


def test_json_round_trip():
    cfg = PRESETS["small"]
    raw = config_json_bytes(cfg)
    assert isinstance(raw, bytes) and json.loads(raw)["model"]["emb_dim"] == 384
    assert config_from_upload(raw) == cfg
    assert config_from_upload(b"\xef\xbb\xbf" + raw) == cfg  # UTF-8 BOM tolerated


@pytest.mark.parametrize("raw, words", [
    (b"\xff\xfe", "UTF-8"),
    (b"{", "not valid JSON"),
    (b"[1]", "JSON object"),
    (b'{"nope": 1}', "nope"),
    (b'{"lr": "fast"}', "lr must be a number"),
    (b'{"model": ' + b"[" * 300_000 + b"]" * 300_000 + b"}", "nests .* too deeply"),  # 600 KB
])
def test_upload_errors_say_what_is_wrong(raw, words):
    with pytest.raises(GptdashError, match=words):
        config_from_upload(raw)
