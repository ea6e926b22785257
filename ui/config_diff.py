"""Which hyperparameters set runs apart, and configs in and out as JSON files."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from ui.format import DASH

_MISSING = object()


def display_value(value: Any) -> str:
    """A config value as a table shows it: floats via ``:g``, missing as "—"."""
    if value is _MISSING or value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def differing_params(configs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The hyperparameters whose values differ among runs, one row each.

    ``configs`` maps run name to a flat config (``TrainConfig.flat()``). Columns
    are the run names in the given order; the index, named "parameter", is
    sorted. A key that some runs lack counts as differing and shows as "—".
    Cells are display strings.
    """
    names = list(configs)
    params = sorted({key for cfg in configs.values() for key in cfg})
    rows: dict[str, list[str]] = {}
    for param in params:
        values = [configs[name].get(param, _MISSING) for name in names]
        # repr tells 1 from 1.0 and True from 1, and makes NaN equal to NaN.
        if len({"<missing>" if v is _MISSING else repr(v) for v in values}) > 1:
            rows[param] = [display_value(v) for v in values]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=names, dtype=object)
    table.index.name = "parameter"
    return table


def config_json_bytes(cfg: TrainConfig) -> bytes:
    """The config as a UTF-8 JSON file, for a download button."""
    return cfg.to_json().encode("utf-8")


def config_from_upload(raw: bytes) -> TrainConfig:
    """Read an uploaded JSON config; GptdashError says what is wrong with the file.

    The result is not validated, so the form can show each field's problem
    beside the field rather than one error for the whole file.
    """
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate the BOM some Windows editors write
    except UnicodeDecodeError:
        raise GptdashError("the config file is not UTF-8 text: save it as UTF-8 JSON") from None
    return TrainConfig.from_json(text)
