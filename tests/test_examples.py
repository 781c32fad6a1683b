"""Every script in examples/ runs, on small sizes."""

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_custom_loop_example_trains() -> None:
    # a fresh interpreter: the example owns its process group, as a user's script would
    code = ("import runpy; m = runpy.run_path('examples/custom_loop.py'); "
            "first, last = m['main'](rows=6000, batch_size=128); assert last < 0.6 * first, (first, last)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps, loss" in proc.stdout


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == ["custom_loop.py"]
