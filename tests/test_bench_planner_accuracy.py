"""bench/planner_accuracy.py on a table of runs it was not written for (``--csv``): IsoFLOP
curves drawn from a known law, so its held-out checks must find the law's own figures."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from analysis.scaling import LossLaw

ROOT = Path(__file__).resolve().parent.parent
LAW = LossLaw(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37)  # about Epoch's refit


def test_the_bench_reads_any_table_finds_its_budgets_and_checks_the_held_out_ones(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for budget in (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21):
        n_opt = float(LAW.optimal(budget)[0])
        for n in n_opt * np.geomspace(1 / 4, 4, 7):
            d = budget / (6 * n)
            rows.append({"params": n, "tokens": d,
                         "loss": float(LAW.loss(n, d)) * (1 + 0.002 * rng.normal())})
    table = tmp_path / "runs.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["params", "tokens", "loss"])
        writer.writeheader()
        writer.writerows(rows)
    out = subprocess.run([sys.executable, "bench/planner_accuracy.py", "--csv", str(table),
                          "--n", "params", "--d", "tokens", "--loss", "loss", "--boot", "20"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[0])
    assert len(result["budgets"]) == 7  # found in the table, no list given
    held = result["held_out"]
    assert held["fit_points"] == 5 * 7 and held["held_out_points"] == 2 * 7  # up to 1e20
    assert held["loss_mean_error"] < 0.01
    assert held["n_opt_worst_factor_approach3"] < 1.15
    assert held["n_opt_worst_factor_approach2"] < 1.25
    alpha = result["whole"]["approach3"]["alpha"]
    assert alpha["interval"][0] <= LAW.alpha + 0.02 and LAW.alpha - 0.02 <= alpha["interval"][1]
    assert "held out: fitted on 35 points" in out.stdout


def test_a_table_without_its_columns_is_one_line(tmp_path):
    table = tmp_path / "runs.csv"
    table.write_text("a,b\n1,2\n")
    out = subprocess.run([sys.executable, "bench/planner_accuracy.py", "--csv", str(table),
                          "--d", "b"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "cannot read" in out.stderr
    assert "Traceback" not in out.stderr
