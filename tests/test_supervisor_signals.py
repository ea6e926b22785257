"""The supervisor behind `gptdash serve` stops at once on a second Ctrl-C or SIGTERM."""

import signal
import subprocess
import sys
import textwrap
import time

from test_cli import ROOT

# A supervisor of one child that ignores SIGTERM (a worker saving a long checkpoint) and
# may take 60 s to stop cleanly; "started" once the child runs.
SUPERVISED = textwrap.dedent("""
    import sys, time
    from jobs.supervisor import Child, Supervisor
    slow = [sys.executable, "-c", "import signal, time\\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\nprint('child up', flush=True)\\n"
            "time.sleep(120)"]
    Supervisor([Child("slow worker", slow, stop_timeout_s=60)], say=lambda line: None).run()
""")


def test_a_second_signal_while_a_child_stops_kills_it_without_waiting():
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "child up"
        proc.send_signal(signal.SIGTERM)  # the child ignores it: a clean stop would wait
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # the second: do not wait for checkpoints
        started = time.monotonic()
        # It used to wait out the child's 60 s stop timeout: the second signal found no child.
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()
