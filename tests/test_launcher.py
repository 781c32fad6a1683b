"""The local launcher: results and errors come back from the spawned ranks in memory."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from torchrec_fusion.distributed.launcher import init_distributed, launch


def _tensors(scale: float) -> dict:
    ctx = init_distributed("cpu")
    return {"rank": ctx.rank, "t": torch.arange(6.0).view(2, 3) * scale + ctx.rank}


def _fails_on_rank_1() -> int:
    ctx = init_distributed("cpu")
    if ctx.rank == 1:
        raise KeyError("rank 1's own error")
    return ctx.rank


def _dies_on_rank_1() -> int:
    ctx = init_distributed("cpu")
    if ctx.rank == 1:
        os._exit(3)  # killed: no result, no error sent
    return ctx.rank


def test_results_with_tensors_come_back_in_rank_order() -> None:
    out = launch(_tensors, 2, 2.0)
    assert [r["rank"] for r in out] == [0, 1]
    assert torch.equal(out[1]["t"], torch.arange(6.0).view(2, 3) * 2.0 + 1)


def test_a_ranks_own_error_is_raised() -> None:
    with pytest.raises(KeyError, match="rank 1's own error"):
        launch(_fails_on_rank_1, 2)


def test_a_killed_rank_is_an_error_not_a_hang() -> None:
    with pytest.raises(Exception, match="exit|ended without a result"):
        launch(_dies_on_rank_1, 2)


# a launcher whose two ranks sleep, each writing its pid first; it exits 130 on KeyboardInterrupt
_SLEEPERS = '''
import os, signal, sys, time
from torchrec_fusion.distributed.launcher import init_distributed, launch

# as under a terminal, even where the test suite runs with SIGINT ignored (a background job inherits
# SIG_IGN, and Python then installs no KeyboardInterrupt handler)
signal.signal(signal.SIGINT, signal.default_int_handler)

def sleeper(folder):
    ctx = init_distributed("cpu")
    with open(os.path.join(folder, f"rank{ctx.rank}.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(folder, f"rank{ctx.rank}.tmp"), os.path.join(folder, f"rank{ctx.rank}"))
    time.sleep(600)

if __name__ == "__main__":
    try:
        launch(sleeper, 2, sys.argv[1], device="cpu")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_sleepers(tmp_path) -> tuple:
    (tmp_path / "sleepers.py").write_text(_SLEEPERS)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "sleepers.py"), str(tmp_path)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"rank{r}").exists() for r in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    return proc, [int((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]


def _gone(pids: list, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_ctrl_c_ends_every_rank_without_their_tracebacks(tmp_path) -> None:
    proc, ranks = _start_sleepers(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        alive = [p for p in ranks if _alive(p)]
        proc.kill()
        pytest.fail(f"the launcher did not end on Ctrl-C; ranks alive: {alive}; stderr: {proc.communicate()[1]}")
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 130, err
    assert _gone(ranks, 10) and "Traceback" not in err and err.strip().endswith("interrupted")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_ranks_end_with_a_killed_launcher(tmp_path) -> None:
    proc, ranks = _start_sleepers(tmp_path)
    proc.kill()  # SIGKILL: no handler of the launcher runs
    proc.wait()
    assert _gone(ranks, 30)


def test_cli_interrupts_are_one_line(monkeypatch, capsys) -> None:
    from torchrec_fusion.cli import main
    from torchrec_fusion.commands import COMMANDS

    def ctrl_c(args):
        raise KeyboardInterrupt

    def sigterm(args):
        os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises where this process stands
        time.sleep(5)
        return 0

    monkeypatch.setattr(COMMANDS["train"], "run", ctrl_c)
    assert main(["train"]) == 130
    monkeypatch.setattr(COMMANDS["train"], "run", sigterm)
    assert main(["train"]) == 143
    assert capsys.readouterr().err.splitlines() == ["torchrec-fusion: interrupted", "torchrec-fusion: terminated"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
