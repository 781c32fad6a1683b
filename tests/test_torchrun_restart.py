"""A rank killed from outside under torchrun: the job restarts from its last checkpoint and finishes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def _children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the worker processes through /proc")
def test_sigkilled_rank_restarts_from_checkpoint_and_finishes(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "2", "--monitor-interval", "0.5", "-m", "torchrec_fusion", "train",
           "--dataset", "synthetic", "--synthetic-rows", "40000", "--synthetic-scale", "0.05", "--epochs", "3",
           "--batch-size", "64", "--embedding-dim", "16", "--checkpoint-every", "25", "--resume", "auto",
           "--output-dir", str(out), "--no-progress", "--no-report"]
    log = open(tmp_path / "log.txt", "w")
    agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "latest").exists():  # the first checkpoint is published
            assert agent.poll() is None, open(tmp_path / "log.txt").read()
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        workers = _children(agent.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # from outside: no hook of ours runs
        killed_at = time.time()
        rc = agent.wait(timeout=600)
    finally:
        if agent.poll() is None:
            agent.kill()
        log.close()
    text = open(tmp_path / "log.txt").read()
    assert rc == 0, text[-3000:]
    assert "resumed from" in text, text[-3000:]  # the restarted workers began at the checkpoint
    metrics = json.loads((out / "metrics.json").read_text())
    assert os.path.getmtime(out / "metrics.json") > killed_at
    steps_per_epoch = 32000 // 128
    assert metrics["steps"] == 3 * steps_per_epoch and len(metrics["step_losses"]) == metrics["steps"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
