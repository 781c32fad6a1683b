"""torch-rechub's MMoE beside our plain MovieLens command, on MovieLens-100K u1.base/u1.test (issue #15).

    .venv/bin/python -m benchmarks.rechub                        # 2 rounds of 25-epoch runs: 5 min on 2 idle cores
    .venv/bin/python -m benchmarks.rechub --rounds 1 --epochs 1  # a smoke run
    .venv/bin/pip install --no-deps --target ../rechub_pkgs torch-rechub==0.9.0 \\
        pandas scikit-learn scipy joblib threadpoolctl narwhals  # torch-rechub, outside the project's requirements

* ``torch-rechub``: torch_rechub 0.9.0's ``MMOE`` trained by its own ``MTLTrainer.fit`` (its Adam,
  losses, per-sample ``DataLoader`` of its ``DataGenerator``, evaluation after every epoch), one
  process with torch's default threads, fp32, set up as its MMoE example and tutorial do
  (examples/ranking/run_census.py, docs/.../multi_task/mmoe.md): 8 experts of [16], towers [8],
  Adam lr 1e-3 and weight decay 1e-4, batch 1024, seed 2022, early-stopping patience above the
  epoch count (the example's 30: it never stops, the last epoch's model is scored); 16-dim tables
  as the tutorial's. Also at batch 4096, our batch per rank, with the same settings.
  Its rows are the rows our run trains on (``prepare_data`` of our command's config): ``user``,
  ``item``, ``age``, ``gender``, ``occupation``, ``zip`` as ``SparseFeature``; the ``genres``,
  ``user_history`` and ``item_audience`` bags as ``SequenceFeature`` (padded with 0, ids shifted by
  one, pooled as ours pools them: genres sum, histories mean); our two dense columns (release
  year, age / 50) as ``DenseFeature``. Tasks: ``like`` (rating >= 4, "classification", BCE) and
  ``rating`` ("regression", MSE on the raw rating). Its samples/s is the wall time of its
  ``train_one_epoch`` calls (the whole epoch loop, batches built by its loader included; its
  per-epoch evaluation excluded) over the rows it trained on; AUC and RMSE are its
  ``MTLTrainer.evaluate`` on u1.test (sklearn's ``roc_auc_score`` and the square root of its MSE).
* ``ours``: ``train(TrainConfig.make(dataset="movielens", data_dir=..., world_size=2, progress=False,
  report=False))``, the README's plain command: its ``samples_per_second`` (its training loop,
  evaluation excluded; steps x batch x ranks, so the rows of a last partial global batch, which it
  does not train on, are not counted) and u1.test metrics.

The contenders alternate within each round (the order reversed every other round), each in fresh
processes; the machine's load average and the other processes' CPU use (cores) are recorded
around every run, since others may be working on the machine.
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from benchmarks.common import OtherLoad, load_average

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ML = ROOT.parent / "shared" / "data" / "ml-100k"
DEFAULT_PKGS = ROOT.parent / "rechub_pkgs"
RECHUB_VERSION = "0.9.0"
# the dependencies its MMoE path imports (torch_rechub.utils.data: pandas and sklearn) and theirs not in .venv
INSTALL = (".venv/bin/pip install --no-deps --target {pkgs} torch-rechub==" + RECHUB_VERSION
           + " pandas scikit-learn scipy joblib threadpoolctl narwhals")
# torch-rechub's MMoE example (run_census.py / run_ali_ccp_multi_task.py) and tutorial (16-dim tables)
RECHUB_MODEL = {"n_expert": 8, "expert_params": {"dims": [16]}, "tower_params_list": [{"dims": [8]}, {"dims": [8]}]}
RECHUB_OPTIMIZER = {"lr": 1e-3, "weight_decay": 1e-4}
RECHUB_DIM, RECHUB_BATCH, RECHUB_SEED = 16, 1024, 2022
OUR_POOLING_DEFAULT = "sum"  # a bag without a pooling entry in MultiTaskData.pooling is sum-pooled


@contextlib.contextmanager
def captured_output() -> Iterator[Callable[[], str]]:
    """Sends this process's stdout and stderr (file descriptors 1 and 2, so child processes' too) to
    a temporary file while the block runs; yields a function returning what was written."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

        def text() -> str:
            sys.stdout.flush()
            sys.stderr.flush()
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _our_config(data_dir: str, epochs: int) -> Any:
    """The README's plain command: ``torchrec-fusion train --dataset movielens --data-dir D --world-size 2``."""
    from torchrec_fusion.training.config import TrainConfig

    return TrainConfig.make(dataset="movielens", data_dir=data_dir, world_size=2, progress=False, report=False,
                            epochs=epochs)


def _padded(values: Any, offsets: Any) -> Any:
    """A bag column as torch-rechub takes it: ``[N, L]`` int64, ids shifted by one, 0 as padding."""
    import numpy as np
    import torch

    lens = offsets[1:] - offsets[:-1]
    n, width = lens.numel(), max(int(lens.max()) if lens.numel() else 0, 1)
    row = torch.repeat_interleave(torch.arange(n), lens)
    col = torch.arange(values.numel()) - torch.repeat_interleave(offsets[:-1], lens)
    out = torch.zeros(n, width, dtype=torch.int64)
    out[row, col] = values.long() + 1
    return np.ascontiguousarray(out.numpy())


def rechub_inputs(d: Any) -> Tuple[Dict[str, Any], Any, List[Tuple[str, str, int, int, Optional[str]]]]:
    """Our rows ``d`` (a ``MultiTaskData``) as torch-rechub's ``x`` dict and ``y`` array, and the feature
    list that builds its ``SparseFeature`` / ``SequenceFeature`` / ``DenseFeature`` objects:
    ``(kind, name, vocab, width, pooling)``."""
    import numpy as np

    x: Dict[str, Any] = {}
    spec: List[Tuple[str, str, int, int, Optional[str]]] = []
    for name, col in d.sparse.items():
        vocab = int(d.num_embeddings[name])
        if col.offsets is None:
            x[name] = col.values.long().numpy()
            spec.append(("sparse", name, vocab, 1, None))
        else:
            x[name] = _padded(col.values, col.offsets)
            spec.append(("sequence", name, vocab + 1, x[name].shape[1], d.pooling.get(name, OUR_POOLING_DEFAULT)))
    for j in range(d.dense.shape[1]):
        x[f"dense_{j}"] = d.dense[:, j].numpy().astype(np.float32)
        spec.append(("dense", f"dense_{j}", 0, 1, None))
    return x, d.labels.numpy().astype(np.float32), spec


def _rechub_features(spec: List[Tuple[str, str, int, int, Optional[str]]]) -> List[Any]:
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature  # type: ignore[import-not-found]

    features: List[Any] = []
    for kind, name, vocab, _, pooling in spec:
        if kind == "sparse":
            features.append(SparseFeature(name, vocab_size=vocab, embed_dim=RECHUB_DIM))
        elif kind == "sequence":
            features.append(SequenceFeature(name, vocab_size=vocab, embed_dim=RECHUB_DIM, pooling=pooling,
                                            padding_idx=0))
        else:
            features.append(DenseFeature(name))
    return features


def rechub_run(pkgs: str, data_dir: str, batch: int, epochs: int) -> Dict[str, Any]:
    """One torch-rechub MMoE run in this (fresh) process: its ``MTLTrainer.fit`` over u1.base for
    ``epochs`` epochs at ``batch``, each ``train_one_epoch`` timed, then its ``evaluate`` on u1.test."""
    if pkgs not in sys.path:
        sys.path.append(pkgs)  # appended: nothing of .venv is shadowed
    import torch
    from torch_rechub.models.multi_task import MMOE  # type: ignore[import-not-found]
    from torch_rechub.trainers import MTLTrainer  # type: ignore[import-not-found]
    from torch_rechub.utils.data import DataGenerator  # type: ignore[import-not-found]

    from torchrec_fusion.training.prepare import prepare_data

    prepared = prepare_data(_our_config(data_dir, epochs))
    train, test = prepared.splits["train"], prepared.splits["test"]
    assert train.task_names == ["like", "rating"], train.task_names
    (x_tr, y_tr, spec), (x_te, y_te, _) = rechub_inputs(train), rechub_inputs(test)
    torch.manual_seed(RECHUB_SEED)
    task_types = ["classification", "regression"]
    model = MMOE(_rechub_features(spec), task_types, **RECHUB_MODEL)
    train_dl, _, test_dl = DataGenerator(x_tr, y_tr).generate_dataloader(
        x_val=x_te, y_val=y_te, x_test=x_te, y_test=y_te, batch_size=batch)
    seconds: List[float] = []
    with tempfile.TemporaryDirectory() as model_dir, captured_output():
        trainer = MTLTrainer(model, task_types=task_types, optimizer_params=dict(RECHUB_OPTIMIZER), n_epoch=epochs,
                             earlystop_patience=max(30, epochs + 1), device="cpu", model_path=model_dir)
        epoch_fn = trainer.train_one_epoch

        def timed_epoch(loader: Any) -> Any:
            t = time.perf_counter()
            out = epoch_fn(loader)
            seconds.append(time.perf_counter() - t)
            return out

        trainer.train_one_epoch = timed_epoch
        trainer.fit(train_dl, test_dl)  # its per-epoch evaluation: u1.test, as our run evaluates it
        auc, mse = trainer.evaluate(trainer.model, test_dl)
    rows = len(y_tr)
    return {"samples_per_second": rows * len(seconds) / sum(seconds), "epoch_seconds": seconds, "rows": rows,
            "epochs": len(seconds), "batch": batch, "processes": 1, "threads": torch.get_num_threads(),
            "auc": float(auc), "rmse": math.sqrt(float(mse)), "features": [s[:2] + s[3:] for s in spec]}


def our_run(data_dir: str, epochs: int) -> Dict[str, Any]:
    """The README's plain command (its defaults), as ``train`` runs it: 2 local processes."""
    from torchrec_fusion.training.trainer import train

    config = _our_config(data_dir, epochs)
    with captured_output() as text:
        try:
            res = train(config)
        except BaseException:
            print(text()[-4000:], file=sys.__stderr__)
            raise
        threads = re.search(r"threads: (\d+) per rank", text())
    return {"samples_per_second": res.samples_per_second, "epochs": config.epochs, "steps": res.steps,
            "batch": config.batch_size, "processes": res.world_size, "threads": int(threads[1]) if threads else None,
            "precision": res.config.get("precision"), "auc": res.tasks["like"]["auc"],
            "rmse": res.tasks["rating"]["rmse"], "train_seconds": res.train_seconds}


# (contender, batch): torch-rechub at its examples' batch, ours, torch-rechub at our batch per rank
RUNS: Tuple[Tuple[str, int], ...] = (("torch-rechub", RECHUB_BATCH), ("ours", 4096), ("torch-rechub", 4096))


def _measured(name: str, batch: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One run in fresh processes, with the machine's load around it."""
    before, other, t = load_average(), OtherLoad(), time.perf_counter()
    if name == "ours":
        out = our_run(args.data_dir, args.epochs)
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            out = pool.submit(rechub_run, str(args.rechub_path), args.data_dir, batch, args.epochs).result()
    out.update(contender=name, wall_seconds=time.perf_counter() - t, other_cores=other.cores(),
               load_before=list(before), load_after=list(load_average()))
    return out


def _table(runs: List[Dict[str, Any]]) -> List[str]:
    """The printed table: per contender and batch, every round's samples/s, quality and ratio."""
    ref = statistics.mean(r["samples_per_second"] for r in runs
                          if r["contender"] == "torch-rechub" and r["batch"] == RECHUB_BATCH)
    lines = [f"{'contender':<13} {'batch':>6} {'processes':>12} {'samples/s (each round)':<26} {'mean':>8} "
             f"{'AUC like':<16} {'RMSE rating':<16} {'ratio':>6}"]
    for name, batch in RUNS:
        mine = [r for r in runs if r["contender"] == name and r["batch"] == batch]
        rate = statistics.mean(r["samples_per_second"] for r in mine)
        procs = f"{mine[0]['processes']} x {mine[0]['threads']} thr"
        rates, aucs, rmses = (" / ".join(fmt.format(r[k]) for r in mine)
                              for k, fmt in (("samples_per_second", "{:,.0f}"), ("auc", "{:.4f}"), ("rmse", "{:.4f}")))
        lines.append(f"{name:<13} {batch:>6} {procs:>12} {rates:<26} {rate:>8,.0f} {aucs:<16} {rmses:<16} "
                     f"{rate / ref:>6.2f}")
    lines.append(f"ratio: mean samples/s over torch-rechub's at batch {RECHUB_BATCH} (its examples' batch)")
    return lines


def _write(path: Path, result: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rechub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.path.relpath(DEFAULT_ML), help="MovieLens-100K's official files")
    p.add_argument("--rechub-path", type=Path, default=DEFAULT_PKGS, help="the --target folder of torch-rechub")
    p.add_argument("--rounds", type=int, default=2, help="rounds; every contender runs once in each")
    p.add_argument("--epochs", type=int, default=25, help="epochs of every run (ours' default, 25)")
    p.add_argument("--out", type=Path, help="also write the runs as JSON here")
    args = p.parse_args(argv)
    if not (args.rechub_path / "torch_rechub").is_dir():
        print(f"torch-rechub is not in {args.rechub_path}; install it outside the project's requirements:\n  "
              + INSTALL.format(pkgs=args.rechub_path), file=sys.stderr)
        return 2
    if not (Path(args.data_dir) / "u1.base").is_file():
        print(f"no MovieLens-100K u1.base in {args.data_dir} (--data-dir)", file=sys.stderr)
        return 2
    runs: List[Dict[str, Any]] = []
    for r in range(args.rounds):
        for name, batch in RUNS if r % 2 == 0 else RUNS[::-1]:
            runs.append({"round": r + 1, **_measured(name, batch, args)})
            m = runs[-1]
            epochs = (f" (median epoch {m['rows'] / statistics.median(m['epoch_seconds']):,.0f})"
                      if "epoch_seconds" in m else "")
            print(f"round {r + 1} {name} batch {batch}: {m['samples_per_second']:,.0f} samples/s{epochs}, "
                  f"AUC {m['auc']:.4f}, "
                  f"RMSE {m['rmse']:.4f}, wall {m['wall_seconds']:.0f} s; load average {m['load_before'][0]:.2f} -> "
                  f"{m['load_after'][0]:.2f}, other processes {m['other_cores']:.2f} cores", flush=True)
    print(f"\nMovieLens-100K u1.base -> u1.test, {args.epochs} epochs per run, {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs")
    print("\n".join(_table(runs)))
    if args.out:
        _write(args.out, {"epochs": args.epochs, "rounds": args.rounds, "cpus": os.cpu_count(), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
