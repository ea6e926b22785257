"""Tags: `--tag a,b` and `--tag a --tag b` and the pages' comma-separated field give the
same tags, shown the same way by `gptdash list`/`show` and the Runs table."""

import json
import re

import pytest

from jobs import cli
from storage.errors import StorageError
from storage.tags import check_tags, format_tags, parse_tags


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


@pytest.mark.parametrize("tag, shown", [("t\nag", r"'t\nag'"), ("red\x1b[31m", r"'red\x1b[31m'"),
                                        ("r\u202etl", r"'r\u202etl'"), ("x" * 201, "'xxxx")])
def test_a_tag_that_is_not_one_printable_line_is_refused_as_names_are(tag, shown):
    with pytest.raises(StorageError, match="^tag " + re.escape(shown)):
        check_tags(["fine", tag])
    assert check_tags(["fine", "lr sweep"]) == ["fine", "lr sweep"]


def test_cli_refuses_a_tag_with_a_newline_in_one_line_and_queues_nothing(store, capsys):
    code = cli.main(["submit", "--preset", "tiny", "--set", "device=cpu", "--tag", "t\nag"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "tag 't\\nag' holds a control character" in err
    assert store.list_runs() == []


def test_list_shows_an_old_rows_bidi_controls_escaped(store, capsys):
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from storage.schema import Run

    run_id = store.create_run("plain", {}, max_steps=10)
    with Session(store.engine) as session, session.begin():  # written before the check
        session.execute(update(Run).where(Run.id == run_id)
                        .values(name="report\u202egpj.exe", tags=["a\u2066b"]))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "\u202e" not in out and "\u2066" not in out
    assert out.splitlines()[-1].endswith(r"report\u202egpj.exe  [a\u2066b]")


def test_a_sweep_with_a_bad_tag_writes_neither_its_sweep_nor_its_runs(store):
    from gptcore.config import apply_overrides, preset
    from jobs.sweeps import plan_sweep, submit_sweep

    base = apply_overrides(preset("tiny"), {"device": "cpu", "max_steps": 20})
    plan = plan_sweep(base, ["lr=1e-3,3e-3"], [])
    with pytest.raises(StorageError, match="tag 't\\\\nag' holds a control character"):
        submit_sweep(store, plan, tags=["fine", "t\nag"])
    with pytest.raises(StorageError, match="notes hold a bidirectional control"):
        submit_sweep(store, plan, notes="\u202e")
    assert store.list_sweeps() == [] and store.list_runs() == []
