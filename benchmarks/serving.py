"""Serving: what quantized tables save and cost, and how fast the inference module scores.

For a finished run (the ml-100k run of configs/movielens-100k.yaml, and a synthetic run whose
largest table has 10^7 rows), each dtype (fp32, fp16, int8, int4) is exported with ``export_run``
and measured:

- bytes of every table and in all, against fp32 (as the export records them);
- every task's metric on the run's test split (AUC of binary tasks, RMSE of regression ones) and,
  where the data builds candidate rows, NDCG@10 of the ranking task (every test user with a liked
  held-out item ranks the whole catalogue by the relevance task's score, training items excluded),
  and the change against fp32;
- the inference module's latency per batch (1, 64 and 1024 rows of the test split, median of
  repeated forwards), eager and, where the module scripts, TorchScript.

    python -m benchmarks.serving --run runs/ml-100k [--synthetic-run DIR] [--out DIR] [--json FILE] [--threads 1]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch

from torchrec_fusion.evaluation.catalogue import catalogue_task, relevant_rows
from torchrec_fusion.evaluation.metrics import task_metrics
from torchrec_fusion.evaluation.ranking import ndcg
from torchrec_fusion.outputs import write_json
from torchrec_fusion.serving import export_run, load_exported
from torchrec_fusion.serving.inference_module import InferenceModule, script_inference
from torchrec_fusion.training.inference import load_run
from torchrec_fusion.training.prepare import PreparedData, prepare_data

DTYPES = ("fp32", "fp16", "int8", "int4")
BATCHES = (1, 64, 1024)


def _metrics(model: Any, prepared: PreparedData) -> Dict[str, float]:
    test = prepared.splits["test"]
    preds: Dict[str, List[torch.Tensor]] = {}
    labels: Dict[str, List[torch.Tensor]] = {}
    with torch.inference_mode():
        for batch in test.batches(4096, drop_last=False):
            _, (_, p, y) = model(batch)
            for k in p:
                preds.setdefault(k, []).append(p[k])
                labels.setdefault(k, []).append(y[k])
    n = len(test)
    metrics = task_metrics(model.tasks, {k: torch.cat(v)[:n] for k, v in preds.items()},
                           {k: torch.cat(v)[:n] for k, v in labels.items()})
    out = {}
    for task, m in metrics.items():
        for name in ("auc", "rmse"):
            if name in m:
                out[f"{task}_{name}"] = float(m[name])
    return out


def _ndcg10(model: Any, prepared: PreparedData, relevance: str) -> Optional[float]:
    """NDCG@10 of the catalogue ranking by ``relevance``'s score (None: no candidate rows)."""
    train, test = prepared.splits["train"].in_memory_rows(), prepared.splits["test"].in_memory_rows()
    if prepared.candidates is None or train is None or test is None or relevance not in test.task_names \
            or not bool(relevant_rows(test, relevance).any()):
        return None
    num_items = test.num_embeddings["item"]
    task = catalogue_task(train, test, num_items, relevance)
    module, items, scores = InferenceModule(model).eval(), torch.arange(num_items), []
    with torch.inference_mode():
        for start in range(0, len(task.users), 32):
            u = task.users[start:start + 32]
            rows = prepared.candidates(u.repeat_interleave(num_items), items.repeat(len(u)))
            batch = next(iter(rows.batches(len(rows), drop_last=False)))
            scores.append(module(batch.dense_features, batch.sparse_features)[relevance].view(len(u), -1))
    return float(ndcg(torch.cat(scores), task.positives, 10, exclude=task.seen)[1])


def _latency(module: Any, prepared: PreparedData, repeats: int) -> Dict[str, float]:
    """Median milliseconds per forward of 1, 64 and 1024 test rows."""
    out = {}
    with torch.inference_mode():
        for n in BATCHES:
            batch = next(iter(prepared.splits["test"].batches(n, drop_last=False)))
            for _ in range(3):
                module(batch.dense_features, batch.sparse_features)
            times = []
            for _ in range(repeats if n < 1024 else max(repeats // 4, 5)):
                t = time.perf_counter()
                module(batch.dense_features, batch.sparse_features)
                times.append(time.perf_counter() - t)
            out[f"ms_{n}"] = 1000 * statistics.median(times)
    return out


def measure_run(run_dir: str, out_dir: str, repeats: int = 50, rank: bool = True) -> Dict[str, Any]:
    """Every dtype of ``run_dir`` exported under ``out_dir`` and measured (see the module docstring)."""
    config, _ = load_run(run_dir)
    prepared = prepare_data(config)
    result: Dict[str, Any] = {"run": run_dir, "dtypes": {}}
    for dtype in DTYPES:
        path = export_run(run_dir, os.path.join(out_dir, dtype), quantize=None if dtype == "fp32" else dtype)
        with open(os.path.join(path, "schema.json")) as f:
            tables = json.load(f)["tables"]
        model = load_exported(path)
        row: Dict[str, Any] = {"tables": {t: v["bytes"] for t, v in tables.items()},
                               "bytes": sum(v["bytes"] for v in tables.values()),
                               "fp32_bytes": sum(v["fp32_bytes"] for v in tables.values()),
                               "file_bytes": os.path.getsize(os.path.join(path, "model.pt")),
                               "metrics": _metrics(model, prepared)}
        if rank:
            row["metrics"]["ndcg@10"] = _ndcg10(model, prepared, config.ranking_relevance)
        module = InferenceModule(model).eval()
        row["eager"] = _latency(module, prepared, repeats)
        batch = next(iter(prepared.splits["test"].batches(64, drop_last=False)))
        try:
            row["scripted"] = _latency(script_inference(module, batch.dense_features, batch.sparse_features),
                                       prepared, repeats)
        except ValueError as e:
            row["scripted"] = str(e)
        result["dtypes"][dtype] = row
        print(dtype, json.dumps(row), flush=True)
        del model, module
    base = result["dtypes"]["fp32"]["metrics"]
    for row in result["dtypes"].values():
        row["delta"] = {k: (v - base[k]) if v is not None and base.get(k) is not None else None
                        for k, v in row["metrics"].items()}
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run (e.g. configs/movielens-100k.yaml's)")
    p.add_argument("--synthetic-run", help="a second run, e.g. synthetic with 10^7-row tables (no ranking)")
    p.add_argument("--out", help="where the exports go (default: a temporary folder)")
    p.add_argument("--repeats", type=int, default=50, help="forwards timed per batch size")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared machine a second thread waits on a busy core)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="serving-")
    results = {"ml": measure_run(args.run, os.path.join(out, "ml"), args.repeats)}
    if args.synthetic_run:
        results["synthetic"] = measure_run(args.synthetic_run, os.path.join(out, "synthetic"), args.repeats,
                                           rank=False)
    if args.json:
        write_json(args.json, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
