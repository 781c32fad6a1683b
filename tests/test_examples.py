"""Every script in examples/ runs, on small sizes."""

import subprocess
import sys
from pathlib import Path

from conftest import ML100K, needs_ml100k

ROOT = Path(__file__).resolve().parents[1]


def test_custom_loop_example_trains() -> None:
    # a fresh interpreter: the example owns its process group, as a user's script would
    code = ("import runpy; m = runpy.run_path('examples/custom_loop.py'); "
            f"first, last = m['main']({EXAMPLE_ARGS['custom_loop.py']}); assert last < 0.6 * first, (first, last)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps, loss" in proc.stdout


# every script in examples/ and the small arguments its test runs it with: a new example needs an entry
EXAMPLE_ARGS = {"custom_loop.py": "rows=6000, batch_size=128", "own_table.py": "out=OUT, rows=6000, epochs=1"}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLE_ARGS)


def test_own_table_example(tmp_path: Path) -> None:
    args = EXAMPLE_ARGS["own_table.py"].replace("OUT", repr(str(tmp_path / "run")))
    code = (f"import runpy; m = runpy.run_path('examples/own_table.py'); r = m['main']({args}); "
            "assert set(r['evaluate']) == {'click', 'watch', 'purchase', 'fused'}, r['evaluate']; "
            "assert abs(r['evaluate']['click']['auc'] - r['train']['click']['auc']) < 1e-5; "
            "assert [len(x['items']) for x in r['recommend']] == [5, 5]")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "report.md").exists()


def test_readme_quick_start_runs(tmp_path: Path) -> None:
    """The README's quick start block, as a user would paste it."""
    import re

    block = re.search(r"## Quick start.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(block + "\nassert set(predictions) == {'ctr', 'cvr', 'watch_time', 'ctcvr'}\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_compare_mtl_script_smoke(tmp_path: Path) -> None:
    """scripts/compare_mtl.py end to end on a tiny synthetic grid (the real run is on ml-100k)."""
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "scripts/compare_mtl.py", "--dataset", "synthetic", "--synthetic-rows",
                           "3000", "--archs", "ple", "--balancing", "fixed", "gradnorm", "--seeds", "0",
                           "--epochs", "1", "--batch-size", "256", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.with_suffix(".md").read_text()
    assert "| ple | fixed |" in table and "| ple | gradnorm |" in table
    runs = __import__("json").loads(out.with_suffix(".json").read_text())["runs"]
    assert len(runs) == 2 and all(0.5 < r["tasks"]["ctr"]["auc"] < 1 for r in runs)


@needs_ml100k
def test_compare_fusion_script_smoke(tmp_path: Path) -> None:
    """scripts/compare_fusion.py end to end on ml-100k with one short seed."""
    out = tmp_path / "fus"
    proc = subprocess.run([sys.executable, "scripts/compare_fusion.py", "--data-dir", str(ML100K), "--seeds", "0",
                           "--epochs", "1", "--world-size", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.with_suffix(".md").read_text()
    for row in ("like (single score)", "learnt weighted head", "fitted weighted (validation)", "RRF (k=60)", "Borda"):
        assert f"| {row} |" in table, table


