"""Torch threads: a process that trains or samples takes its share of this machine's cores
(``jobs.threads``), so runs side by side do not spin more threads than there are cores.

The suite trains on one thread (``OMP_NUM_THREADS=1`` under xdist, see conftest), which would
hide the rule: the processes here start without it, as a user's do.
"""

import os
import subprocess
import sys
import time

import pytest
from test_cli import MICRO, ROOT

from gptcore.device import cpu_threads, usable_cores
from jobs.recovery import this_host
from jobs.threads import trainers_here
from storage.store import RunStore

CORES = usable_cores()  # a child inherits the test's affinity


def _user_env(home) -> dict[str, str]:
    """A user's environment: no thread settings, the test's home."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GPTDASH_DB_URL")}
    return {**env, "GPTDASH_HOME": str(home)}


def _fresh_python(home, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_user_env(home),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cores, sharing, limit, threads", [
    (8, 1, None, 8),  # alone: every core
    (16, 3, None, 5),  # three processes: a third of the cores each
    (16, 2, 4, 4),  # OMP_NUM_THREADS caps it
    (2, 4, None, 1),  # more processes than cores: one thread each, never none
    (4, 0, None, 4),  # nobody counted yet: as alone
])
def test_the_rule_shares_the_cores_evenly_within_omp_num_threads(cores, sharing, limit,
                                                                  threads):
    assert cpu_threads(cores, sharing, limit) == threads


def test_usable_cores_are_the_physical_cores_this_process_may_run_on():
    cpus = os.sched_getaffinity(0)
    assert 1 <= usable_cores() <= len(cpus)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, cpus)


def test_trainers_here_counts_live_workers_and_terminal_runs_each_once(store):
    here, me = this_host(), os.getpid()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer lives
    other = subprocess.Popen(["sleep", "60"])  # a `gptdash train` of this host, alive
    try:
        store.register_worker("live", host=here, pid=me, device="cpu")
        store.register_worker("killed", host=here, pid=gone.pid, device="cpu")
        store.register_worker("elsewhere", host="other-box", pid=other.pid, device="cpu")
        store.register_worker("ended", host=here, pid=other.pid, device="cpu")
        store.worker_stopped("ended")
        runs = [store.create_run(f"run {i}", {}, max_steps=10) for i in range(4)]
        store.claim_run(runs[0], "live", host=here, pid=me)  # the live worker's: no more
        store.claim_run(runs[1], f"{here}:{other.pid}", host=here, pid=other.pid)  # + 1
        store.claim_run(runs[2], f"{here}:{gone.pid}", host=here, pid=gone.pid)
        store.claim_run(runs[3], "far:7", host="other-box", pid=other.pid)
        assert trainers_here(store) == 2
    finally:
        other.kill()
        other.wait()


def test_a_training_run_takes_its_share_again_when_another_starts_beside_it(store,
                                                                           monkeypatch):
    import threading

    import torch

    from jobs import threads
    from jobs.threads import ThreadShare, omp_limit

    monkeypatch.setattr(threads, "RESHARE_S", 0.05)
    run_id = store.create_run("mine", {}, max_steps=10)
    store.claim_run(run_id, "me", host=this_host(), pid=os.getpid())
    share, seen = ThreadShare(store), []
    other = subprocess.Popen(["sleep", "60"])
    alone, beside = cpu_threads(CORES, 1, omp_limit()), cpu_threads(CORES, 2, omp_limit())

    def settle(expected: int) -> None:  # steps go on; the count arrives from its own thread
        deadline = time.monotonic() + 10
        while True:
            assert share.should_stop() is False
            if torch.get_num_threads() == expected or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        seen.append(torch.get_num_threads())

    def train():  # the thread that trains polls should_stop after every step
        settle(alone)
        store.register_worker("beside", host=this_host(), pid=other.pid, device="cpu")
        settle(beside)

    before = torch.get_num_threads()
    try:
        thread = threading.Thread(target=train)
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(before)
        share.on_status("completed")  # its counting thread ends with the run
        other.kill()
        other.wait()
    assert seen == [alone, beside]


TRAIN = ["train", "--preset", "tiny", *MICRO, "--set", "max_steps=2", "--set",
         "checkpoint_interval=2", "--quiet"]


def test_train_and_sample_take_their_share_and_threads_overrides_it(tmp_path):
    code = ("import torch\nfrom jobs.cli import main\nthreads = []\n"
            "for command in ([], ['--threads', '1']):\n"
            f"    assert main({TRAIN!r} + command) == 0\n"
            "    threads.append(torch.get_num_threads())\n"
            "for command in (['--threads', '3'], []):\n"
            "    assert main(['sample', '1', '--prompt', 'a', '--max-new-tokens', '2'] + "
            "command) == 0\n"
            "    threads.append(torch.get_num_threads())\n"
            "print(threads)")
    out = _fresh_python(tmp_path, code)
    assert out.returncode == 0, out.stderr
    alone = CORES  # nothing else trains here
    assert out.stdout.splitlines()[-1] == str([alone, 1, 3, alone])


def test_a_run_beside_a_live_worker_takes_half_the_cores_and_so_does_the_worker(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    store.register_worker("gpu-box", host=this_host(), pid=os.getpid(), device="cpu")
    store.close()
    # Each in a process of its own: torch hands a thread the count last set in another one.
    train = _fresh_python(tmp_path, "import torch\nfrom jobs.cli import main\n"
                                    f"assert main({TRAIN!r}) == 0\n"
                                    "print(torch.get_num_threads())")
    assert train.returncode == 0, train.stderr
    worker = _fresh_python(tmp_path, (
        "import threading\nimport torch\nimport jobs.runner as runner\n"
        "from jobs.cli import main\nreal = runner.execute_run\n"
        "def spy(*args, **kwargs):  # in the worker's thread, which trains\n"
        "    print(threading.current_thread().name, torch.get_num_threads(), flush=True)\n"
        "    return real(*args, **kwargs)\n"
        "runner.execute_run = spy\n"
        f"assert main({['submit', *TRAIN[1:-1]]!r}) == 0\n"
        "assert main(['worker', '--exit-when-idle']) == 0\n"))
    assert worker.returncode == 0, worker.stderr
    half = max(1, CORES // 2)  # each and the registered worker
    assert train.stdout.splitlines()[-1] == str(half)
    assert worker.stdout.splitlines()[-1] == f"gptdash-worker {half}"


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_threads_must_be_a_positive_count(home, value, capsys):
    from jobs.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sample", "1", "--prompt", "a", "--threads", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"gptdash sample: argument --threads: {value!r} is not a count of threads: use 1 or "
        "more (see `gptdash sample --help`)")
