from pathlib import Path

from ui.paths import shown_path


def test_paths_under_the_home_directory_read_from_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "ada"))
    assert shown_path(tmp_path / "ada" / ".gptdash" / "gptdash.db") == "~/.gptdash/gptdash.db"
    assert shown_path(str(tmp_path / "ada")) == "~"
    # A sibling that merely starts with the same letters is not under home.
    assert shown_path(tmp_path / "adam" / "x") == str(tmp_path / "adam" / "x")
    assert shown_path(Path("/srv/data/x.txt")) == "/srv/data/x.txt"
