"""The command line answers without importing torch: --help, bad output paths, and (once the flags
are cached) train's --help and argument errors. Timings are benchmarks' business; what makes them
fast is that torch is never imported, which is what these tests check."""

import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

_PROBE = """
import sys
from torchrec_fusion.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print("TORCH", "torch" in sys.modules, "RC", rc)
"""


def _probe(tmp_path: Path, *argv: str) -> Tuple[bool, int, str]:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                         timeout=120)
    last = out.stdout.strip().splitlines()[-1].split()
    text = "\n".join(out.stdout.strip().splitlines()[:-1]) + out.stderr
    return last[1] == "True", int(last[3]), text


def test_help_and_bad_paths_never_import_torch(tmp_path: Path) -> None:
    torch, rc, text = _probe(tmp_path, "--help")
    assert (torch, rc) == (False, 0) and "train" in text and "recommend" in text
    for argv in (["train", "--output-dir", "/proc/x", "--dataset", "synthetic"],
                 ["recommend", "--run", str(tmp_path), "--user", "1", "--output", "/proc/x/top.csv"],
                 ["export", "--run", str(tmp_path), "--to", "/proc/x"]):
        torch, rc, text = _probe(tmp_path, *argv)
        assert (torch, rc) == (False, 2), text
        assert "/proc/x" in text and "cannot write" in text


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    torch, rc, text = _probe(tmp_path, "train", "--output-dir", str(tmp_path / "f"))
    assert (torch, rc) == (False, 2) and "is a file" in text


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "--arch", "nope"]])
def test_train_flags_cached(tmp_path: Path, argv: list[str]) -> None:
    first_torch, _, first = _probe(tmp_path, *argv)  # builds the flags (imports torch), writes the cache
    torch, rc, text = _probe(tmp_path, *argv)
    assert first_torch and not torch, "the second call must answer from the cache"
    assert text == first and rc == (0 if "--help" in argv else 2)
    assert list((tmp_path / "cache" / "torchrec_fusion").glob("train-flags-*.json"))


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    _probe(tmp_path, "train", "--help")
    (cache,) = (tmp_path / "cache" / "torchrec_fusion").glob("train-flags-*.json")
    cache.write_text("{not json")
    torch, rc, text = _probe(tmp_path, "train", "--help")
    assert torch and rc == 0 and "--num-experts" in text
    torch, _, _ = _probe(tmp_path, "train", "--help")
    assert not torch
