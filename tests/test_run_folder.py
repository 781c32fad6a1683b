"""One run per output folder: the lock (live, stale, another host's), the re-use rules (refused,
--resume, --overwrite), and a refused run leaving the earlier one untouched."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchrec_fusion.cli import main
from torchrec_fusion.training import run_folder
from torchrec_fusion.training.run_folder import LOCK, RunFolderError, check_reuse, hold_run_folder

# holds OUT/.lock in another process until its stdin closes (or it is killed); the module is loaded
# by its path (it needs the standard library only), sparing the process the package's torch imports
_HOLDER = ("import importlib.util, sys\n"
           "spec = importlib.util.spec_from_file_location('run_folder', sys.argv[2])\n"
           "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
           "with m.hold_run_folder(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), run_folder.__file__],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _old_run(folder: Path) -> None:
    """The files an earlier finished run leaves (its checkpoint at step 300)."""
    (folder / "checkpoints" / "step_000000300").mkdir(parents=True)
    (folder / "checkpoints" / "latest").write_text("step_000000300")
    (folder / "metrics.json").write_text('{"steps": 300}')
    (folder / "config.yaml").write_text("epochs: 2\n")


def test_a_live_lock_refuses_a_second_run_and_a_crashed_ones_is_taken_over(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {holder.pid} on host"), \
                hold_run_folder(str(out)):
            pass
        # the CLI refuses it the same way, before any data is read
        assert main(["train", "--dataset", "synthetic", "--output-dir", str(out), "--quiet"]) == 2
        assert "in use by another run" in capsys.readouterr().err
    finally:
        holder.kill()  # a crash: its lock file stays, its flock goes with the process
        holder.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid
    with hold_run_folder(str(out)):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert "ended without releasing it" in capsys.readouterr().err
    assert not (out / LOCK).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-elsewhere",
                                             "started": time.time()}))
    with pytest.raises(RunFolderError, match="another host.*delete"), hold_run_folder(str(tmp_path)):
        pass
    assert (tmp_path / LOCK).exists()


def test_released_lock_and_empty_folder_leave_no_trace(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="refused at start"), hold_run_folder(str(out)):
        assert (out / LOCK).exists()
        raise RuntimeError("refused at start")
    assert not out.exists()  # created for the lock, left empty: removed


def test_reuse_rules(tmp_path: Path) -> None:
    _old_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already holds a run.*--resume auto continues it.*--overwrite"):
        check_reuse(str(tmp_path), None, False)
    with pytest.raises(RunFolderError, match="mix its checkpoints"):
        check_reuse(str(tmp_path), str(tmp_path.parent / "another_run"), False)
    check_reuse(str(tmp_path), "auto", False)  # continues it
    check_reuse(str(tmp_path), str(tmp_path / "checkpoints" / "step_000000300"), False)
    with pytest.raises(RunFolderError, match="give one of them"):
        check_reuse(str(tmp_path), "auto", True)
    assert (tmp_path / "checkpoints" / "step_000000300").is_dir()  # nothing removed so far
    removed = []
    check_reuse(str(tmp_path), None, True, log=removed.append)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and "checkpoints" in removed[0]
    check_reuse(str(tmp_path), None, False)  # now a fresh folder
    (tmp_path / "metrics.json").write_text("{}")  # finished, no checkpoint: nothing to continue
    with pytest.raises(RunFolderError, match="without a checkpoint"):
        check_reuse(str(tmp_path), "auto", False)


TINY = ["--dataset", "synthetic", "--synthetic-rows", "600", "--synthetic-scale", "0.05", "--embedding-dim", "8",
        "--batch-size", "100", "--epochs", "1", "--arch", "shared_bottom", "--no-progress", "--quiet", "--no-report"]


def test_rerun_is_refused_untouched_and_overwrite_replaces_the_old_checkpoints(tmp_path: Path, capsys) -> None:
    _old_run(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "metrics.json", tmp_path / "config.yaml")}
    assert main(["train", *TINY, "--seed", "5", "--output-dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in before.items())  # config.yaml too: the run never started
    assert main(["train", *TINY, "--seed", "5", "--overwrite", "--output-dir", str(tmp_path)]) == 0
    names = os.listdir(tmp_path / "checkpoints")
    latest = (tmp_path / "checkpoints" / "latest").read_text()
    assert "step_000000300" not in names and latest in names  # the new run's, not the old step 300
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == int(latest.split("_")[1])
    assert "overwrite: false" in (tmp_path / "config.yaml").read_text()  # repeating it deletes nothing
    assert not (tmp_path / LOCK).exists()


def test_epochs_zero_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--epochs", "0", "--output-dir", str(tmp_path / "run")]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err and not (tmp_path / "run").exists()
