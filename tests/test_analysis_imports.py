"""analysis/ stays pure numeric: numpy, scipy and the standard library only."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_analysis_imports_nothing_heavy_or_from_upper_layers():
    # A fresh interpreter, so modules other tests imported cannot hide an import.
    code = ("import sys, analysis.forecast, analysis.family, analysis.sweep, analysis.frontier, "
            "analysis.scaling, analysis.isoflop, analysis.ladder, analysis.planner; "
            "bad = sorted(m for m in ('torch', 'streamlit', 'plotly', 'sqlalchemy', 'storage', "
            "'jobs', 'ui', 'gptcore') if m in sys.modules); print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
