"""Tags: `--tag a,b` and `--tag a --tag b` and the pages' comma-separated field give the
same tags, shown the same way by `gptdash list`/`show` and the Runs table."""

import json

import pytest

from jobs import cli
from storage.tags import format_tags, parse_tags


@pytest.mark.parametrize("given", ["a, b", "a,b", ["a,b"], ["a", "b"], [" a ", "b,", ",a"],
                                   "a,,b, a"])
def test_every_way_of_typing_two_tags_gives_two(given):
    assert parse_tags(given) == ["a", "b"]


def test_no_tags():
    assert parse_tags(None) == [] and parse_tags("") == [] and parse_tags([" , "]) == []
    assert format_tags([]) == "" and format_tags(None) == ""


def test_tags_are_shown_comma_separated():
    assert format_tags(["baseline", "lr sweep"]) == "baseline, lr sweep"
    assert parse_tags(format_tags(["baseline", "lr sweep"])) == ["baseline", "lr sweep"]


def test_cli_tags_split_on_commas_and_show_alike_everywhere(store, capsys):
    assert cli.main(["submit", "--preset", "tiny", "--set", "device=cpu",
                     "--tag", "a,b", "--tag", "c", "--tag", "a"]) == 0
    run_id = int(capsys.readouterr().out.split()[0])
    assert store.get_run(run_id).tags == ["a", "b", "c"]
    assert cli.main(["list"]) == 0
    assert cli.main(["list", "--tag", "b"]) == 0  # the filter finds one tag of several
    listed = [ln for ln in capsys.readouterr().out.splitlines() if ln.split()[:1] == [str(run_id)]]
    assert len(listed) == 2 and all(ln.endswith("[a, b, c]") for ln in listed)
    assert cli.main(["show", str(run_id)]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == ["a", "b", "c"]  # JSON keeps a list
    assert store.runs_frame()["tags"].tolist() == ["a, b, c"]
