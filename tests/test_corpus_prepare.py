"""`gptdash corpus prepare` and `list` as a user runs them, and the token cache under
kill -9, Ctrl-C, two preparations at once and a corpus file saved anew."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import ROOT, as_from_a_terminal

from gptcore.callbacks import TrainerCallbacks
from gptcore.tokens import Progress as Tokenizing
from gptcore.tokens import in_progress, lookup, prepare, prepared
from jobs.progress import Progress, TokenizeBar
from jobs.threads import ThreadShare

WORDS = np.array("the of and to in is was for on that with as by at from his an were are "
                 "which this be or has had not but first one their its new after who they "
                 "corpus token memory shard window epoch gradient über naïve 数据 café".split())


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """About 20 MB of varied text (seeded random words and paragraphs) in four files: big
    enough that the GPT-2 tokenizer takes a few seconds and encodes in processes."""
    folder = tmp_path_factory.mktemp("big") / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        words = WORDS[rng.integers(0, len(WORDS), 900_000)]
        breaks = rng.random(len(words)) < 0.01
        text = " ".join(np.where(breaks, np.char.add(words, ".\n\n"), words))
        if i % 2:
            paragraphs = text.split("\n\n")
            text = "".join(json.dumps({"text": p}) + "\n" for p in paragraphs)
        (folder / f"part-{i}.{'jsonl' if i % 2 else 'txt'}").write_text(text)
    return folder


def gptdash_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "GPTDASH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    env.pop("GPTDASH_ARTIFACTS", None)
    return env


def corpus_cmd(home: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", "corpus", *args], cwd=ROOT,
                          env=gptdash_env(home), capture_output=True, text=True, timeout=timeout)


_spawned: list[subprocess.Popen] = []


def spawn_prepare(home: Path, corpus: Path) -> subprocess.Popen:
    """`gptdash corpus prepare` in a session of its own (as a terminal's foreground job)."""
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "corpus", "prepare", str(corpus),
                             "--tokenizer", "gpt2"], cwd=ROOT, env=gptdash_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (os.setsid(), as_from_a_terminal()))
    _spawned.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    yield
    while _spawned:
        proc = _spawned.pop()
        for pid in alive_in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def alive_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (a zombie is not running)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def wait_for_progress(home: Path, proc: subprocess.Popen) -> None:
    """Until the preparation has written its progress.json: it is tokenizing."""
    deadline = time.monotonic() + 120
    while not list((home / "cache").glob("tokens-*.tmp/progress.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the preparation never started tokenizing"
        time.sleep(0.02)


def wait_until_gone(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while alive_in_group(pgid):
        assert time.monotonic() < deadline, f"still running: {alive_in_group(pgid)}"
        time.sleep(0.1)


def cache_folders(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "cache").glob("tokens-*") if p.is_dir())


def read_ids(home: Path) -> tuple[bytes, bytes]:
    (folder,) = [p for p in (home / "cache").glob("tokens-*") if p.is_dir()]
    return (folder / "train.bin").read_bytes(), (folder / "val.bin").read_bytes()


def test_kill_9_mid_tokenization_leaves_nothing_readable_and_the_next_prepare_is_clean(
        tmp_path, big_corpus):
    home = tmp_path / "home"
    proc = spawn_prepare(home, big_corpus)
    wait_for_progress(home, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the preparer alone, as `kill -9 PID` does
    proc.communicate()
    # Its encoding processes (and the forkserver) end by themselves, not wait forever.
    wait_until_gone(proc.pid)
    cache = home / "cache"
    assert not list(cache.rglob("manifest.json"))
    assert all(name.endswith(".tmp") for name in cache_folders(home))
    assert prepared(cache) == [] and in_progress(cache) == []
    assert lookup(str(big_corpus), "gpt2", cache, 0.1) is None

    again = corpus_cmd(home, "prepare", str(big_corpus), "--tokenizer", "gpt2")
    assert again.returncode == 0, again.stderr
    assert len(cache_folders(home)) == 1 and not cache_folders(home)[0].endswith(".tmp")
    clean = corpus_cmd(tmp_path / "clean", "prepare", str(big_corpus), "--tokenizer", "gpt2")
    assert clean.returncode == 0, clean.stderr
    assert read_ids(home) == read_ids(tmp_path / "clean")
    assert again.stdout.split(" s: ")[1] == clean.stdout.split(" s: ")[1]  # after the time


def test_two_preparations_at_once_make_one_cache_folder(tmp_path, big_corpus):
    home = tmp_path / "home"
    first, second = spawn_prepare(home, big_corpus), spawn_prepare(home, big_corpus)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert len(cache_folders(home)) == 1
    # The one that waited found the other's work: the same summary, the same seconds.
    assert outs[0][0] == outs[1][0]


@pytest.mark.parametrize("signum, code, name", [(signal.SIGINT, 130, "Ctrl-C"),
                                                (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stop_signal_ends_it_in_one_line_with_nothing_written(tmp_path, big_corpus, signum,
                                                                 code, name):
    home = tmp_path / "home"
    proc = spawn_prepare(home, big_corpus)
    wait_for_progress(home, proc)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # Ctrl-C: the terminal signals the whole group
    else:
        os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == (f"gptdash: corpus preparation stopped by {name}; "
                                            "nothing was written to the token cache")
    assert "Traceback" not in err  # not from the encoding processes either
    assert out == ""
    assert cache_folders(home) == []
    wait_until_gone(proc.pid)


def test_a_file_saved_anew_is_noticed_and_tokenized_again(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("the first version of the notes " * 40)
    cache = tmp_path / "cache"
    first = prepare(str(path), "byte", cache, 0.1)
    assert lookup(str(path), "byte", cache, 0.1) is not None
    # The same size, and a change inside no sample would catch: the new time tells.
    path.write_text("the other version of the notes " * 40)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert lookup(str(path), "byte", cache, 0.1) is None
    second = prepare(str(path), "byte", cache, 0.1)
    ids = np.concatenate([second.train, second.val])
    assert b"other version" in bytes(ids.astype(np.uint8))
    assert not np.array_equal(first.train, second.train)


def test_progress_counts_the_bytes_of_text_and_jsonl_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("text file " * 3000)
    (tmp_path / "c" / "b.jsonl").write_text(json.dumps({"text": "line " * 3000}) + "\n")
    seen: list[Tokenizing] = []
    prepare(str(tmp_path / "c"), "byte", tmp_path / "cache", 0.1, progress=seen.append)
    assert seen[-1].bytes_total == 30000 + len(json.dumps({"text": "line " * 3000})) + 1
    assert seen[-1].bytes_read == seen[-1].bytes_total
    assert seen[-1].fraction == 1.0


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    for args, line in [
        ([str(tmp_path / "missing")], f"gptdash: corpus {str(tmp_path / 'missing')!r} does "
                                      "not exist"),
        ([str(tmp_path / "docs.jsonl")], "gptdash: corpus file 'docs.jsonl' line 2 has no "
                                         "field 'text' (it has: body): set text_field to the "
                                         "field that holds the text"),
        ([str(tmp_path / "docs.jsonl"), "--val-fraction", "0.9"],
         "gptdash: val_fraction must be at most 0.5, not 0.9"),
    ]:
        out = corpus_cmd(tmp_path / "home", "prepare", *args)
        assert (out.returncode, out.stderr, out.stdout) == (2, line + "\n", "")
    assert cache_folders(tmp_path / "home") == []


def test_prepare_then_list(tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": f"doc {i} " * 30}) + "\n"
                                                 for i in range(50)))
    home = tmp_path / "home"
    assert corpus_cmd(home, "list").stdout == ("no prepared corpora yet: tokenize one with "
                                               "`gptdash corpus prepare PATH`\n")
    out = corpus_cmd(home, "prepare", str(tmp_path / "docs.jsonl"), "--text-field", "body",
                     "--val-fraction", "0.2")
    assert out.returncode == 0, out.stderr
    (manifest,) = prepared(home / "cache")
    assert out.stdout == (f"corpus {str(tmp_path / 'docs.jsonl')!r} prepared in "
                          f"{manifest.seconds:.1f} s: 50 documents, {manifest.train_tokens:,} "
                          f"training and {manifest.val_tokens:,} validation tokens (byte)\n")
    again = corpus_cmd(home, "prepare", str(tmp_path / "docs.jsonl"), "--text-field", "body",
                       "--val-fraction", "0.2")
    assert "already prepared: 50 documents" in again.stdout
    # One under way beside it: this test process stands in for the preparer.
    under_way = home / "cache" / "tokens-0123-gpt2.1-abc.tmp"
    under_way.mkdir()
    (under_way / "progress.json").write_text(json.dumps(
        {"corpus": "/data/owt", "tokenizer": "gpt2", "bytes_read": 450_000_000,
         "bytes_total": 900_000_000, "tokens": 3_000_000, "documents": 10,
         "started": time.time() - 30, "pid": os.getpid()}))
    lines = corpus_cmd(home, "list").stdout.splitlines()
    assert lines[0].split() == ["tokens", "val", "documents", "MB", "tokenizer", "corpus"]
    assert lines[1].split() == [f"{manifest.tokens:,}", f"{manifest.val_tokens:,}", "50",
                                f"{manifest.bytes / 1e6:.1f}", "byte",
                                str(tmp_path / "docs.jsonl")]
    assert re.fullmatch(rf"under way \(pid {os.getpid()}, \d+ s\): /data/owt: tokenizing "
                        r"corpus: 50% \(450 MB of 900 MB, 1\d MB/s, 3\.0 M tokens\)", lines[2])


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tokenizing(read: int, total: int = 20_000_000, tokens: int = 0) -> Tokenizing:
    return Tokenizing("c", "gpt2", read, total, tokens, 1, time.time() - 1, os.getpid())


def test_the_bar_shows_mb_tokens_rate_and_eta_on_a_terminal():
    stream = FakeTerminal()
    bar = TokenizeBar(stream)
    bar(tokenizing(5_000_000, tokens=1_000_000))
    bar(tokenizing(10_000_000, tokens=2_500_000))
    bar.close()
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("tokenizing:  50%|")
    assert "10/20 MB [" in last and "MB/s" in last and "2.5 M tokens" in last


def test_off_a_terminal_the_bar_is_a_plain_line_now_and_then(monkeypatch):
    stream = io.StringIO()
    bar = TokenizeBar(stream)
    bar(tokenizing(1_000_000))
    assert stream.getvalue() == ""  # a quick preparation prints nothing but its summary
    monkeypatch.setattr("jobs.progress.PLAIN_EVERY_S", 0.0)
    bar(tokenizing(10_000_000, tokens=2_000_000))
    assert stream.getvalue().startswith("tokenizing corpus: 50% (10 MB of 20 MB, ")


class Heard(TrainerCallbacks):
    def __init__(self):
        self.prepares: list[Tokenizing] = []

    def on_prepare(self, progress):
        self.prepares.append(progress)


def test_training_in_the_foreground_shows_the_tokenizing_bar_before_its_own(store):
    stream = FakeTerminal()
    display = Progress(stream)
    display.on_prepare(tokenizing(10_000_000))
    assert display.tokenizing.bar is not None
    display.on_start({"device": "cpu", "n_params": 1000, "start_step": 0, "max_steps": 10})
    assert display.tokenizing.bar is None  # closed once the model is built
    assert "tokenizing:  50%" in stream.getvalue()
    # What stands between the trainer and the display passes it on.
    heard = Heard()
    share = ThreadShare(store, heard)
    share.on_prepare(tokenizing(1))
    share.on_status("completed")
    assert len(heard.prepares) == 1


def test_a_killed_preparer_its_parent_has_not_reaped_is_not_under_way(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    child.send_signal(signal.SIGKILL)
    stat = Path(f"/proc/{child.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # dead, not yet waited for
        time.sleep(0.01)
    left = tmp_path / "tokens-abc-gpt2.1-abc.tmp"
    left.mkdir()
    (left / "progress.json").write_text(json.dumps(
        {"corpus": "c", "tokenizer": "gpt2", "bytes_read": 1, "bytes_total": 2, "tokens": 1,
         "documents": 0, "started": time.time(), "pid": child.pid}))
    try:
        assert in_progress(tmp_path) == []
    finally:
        child.wait()


def big_text(path: Path) -> Path:
    """9.6 MB of text: past what is tokenized whole when a run is queued for a worker."""
    path.write_text("a corpus line that goes on for a while.\n" * 240_000)
    return path


def test_a_worker_run_on_a_corpus_not_yet_tokenized_tells_its_listener(store, tmp_path):
    from test_steps_agree import Terminal, micro

    from jobs import runner
    from jobs.manager import claim_here

    cfg = micro(corpus=str(big_text(tmp_path / "big.txt")), max_steps=2, eval_interval=2)
    run_id = runner.create_run(store, cfg, check_device=False)  # as `submit` queues it
    claim_here(store, run_id)
    display = Progress(Terminal())
    assert runner.execute_run(store, run_id, extra_callbacks=display).status == "completed"
    drawn = display.stream.getvalue()
    assert "tokenizing: 100%" in drawn and drawn.index("tokenizing") < drawn.index("training on")


def test_gptdash_train_draws_the_bar_before_the_run_on_a_new_corpus(home, tmp_path,
                                                                     monkeypatch, capsys):
    from test_cli import MICRO
    from test_steps_agree import Terminal

    from jobs import cli

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    corpus = big_text(tmp_path / "big.txt")
    assert cli.main(["train", *MICRO, "--set", "max_steps=2", "--set",
                     f"corpus={corpus}"]) == 0
    drawn = terminal.getvalue()
    assert "tokenizing: 100%|" in drawn and "10/10 MB" in drawn
    assert drawn.index("tokenizing") < drawn.index("run 1 created")
