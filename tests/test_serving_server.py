"""``serve``: a real uvicorn server on a free port, real HTTP requests (httpx), scores compared with
the exported model's own; bad requests get a 4xx naming the field and the server keeps serving;
a burst of concurrent requests is batched and each gets its own rows' scores."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest
import torch
import uvicorn

from torchrec_fusion.cli import main
from torchrec_fusion.serving import load_exported
from torchrec_fusion.serving.server import ServeOptions, create_app
from torchrec_fusion.training.config import TrainConfig
from torchrec_fusion.training.inference import load_run, recommend, seen_pairs
from torchrec_fusion.training.item_vectors import catalogue_items
from torchrec_fusion.training.prepare import prepare_data
from torchrec_fusion.training.trainer import train

TINY = dict(dataset="synthetic", synthetic_rows=1500, synthetic_scale=0.05, embedding_dim=8, epochs=1, progress=False,
            verbose=False, report=False, world_size=1, batch_size=128, fusion="weighted", expert_layer_sizes=[16],
            tower_layer_sizes=[8])
OPTIONS = ServeOptions(max_rows=64, max_body_bytes=32 * 1024, batching=True, deadline_ms=20.0)


def start_server(app: Any) -> Tuple[str, uvicorn.Server, threading.Thread]:
    """Runs ``app`` under uvicorn in a thread on a free port; returns its URL once it listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


def json_rows(batch: Any) -> List[Dict[str, Any]]:
    """A batch's rows as the JSON ``/score`` takes."""
    sparse = batch.sparse_features.to_dict()
    rows = []
    for i in range(batch.batch_size):
        bags = {f: jt.values()[jt.offsets()[i]:jt.offsets()[i + 1]].tolist() for f, jt in sparse.items()}
        rows.append({"dense": batch.dense_features[i].tolist(), "sparse": bags})
    return rows


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[Dict[str, Any]]:
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig.make(**TINY, output_dir=str(run)))
    export = str(run / "export")
    assert main(["export", "--run", str(run), "--to", export]) == 0
    url, server, thread = start_server(create_app(export, OPTIONS))
    config, _ = load_run(str(run))
    batch = next(iter(prepare_data(config).eval.batches(40, drop_last=False)))
    model = load_exported(export)
    with torch.no_grad():
        _, (_, expected, _) = model(batch)
    yield {"url": url, "run": str(run), "export": export, "config": config, "rows": json_rows(batch),
           "expected": expected}
    server.should_exit = True
    thread.join(10)


def _check(scores: List[Dict[str, float]], expected: Dict[str, torch.Tensor], rows: slice) -> None:
    for name, values in expected.items():
        got = torch.tensor([s[name] for s in scores])
        torch.testing.assert_close(got, values[rows].float(), rtol=1e-5, atol=1e-6)


def test_served_scores_equal_the_exported_models(served: Dict[str, Any]) -> None:
    r = httpx.post(served["url"] + "/score", json={"rows": served["rows"]})
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert len(scores) == 40 and set(scores[0]) == {"ctr", "cvr", "watch_time", "ctcvr", "fused"}
    _check(scores, served["expected"], slice(0, 40))
    info = httpx.get(served["url"] + "/info").json()
    assert info["scores"] == ["ctr", "cvr", "watch_time", "ctcvr", "fused"] and info["quantization"] is None
    assert info["table_bytes"] == sum(t["fp32_bytes"] for t in info["tables"].values()) > 0


def _bad_requests(rows: List[Dict[str, Any]]) -> List[Tuple[Any, int, str]]:
    """(body, status, field the message names): raw bytes are sent as they are."""
    row = rows[0]
    user = {**row, "sparse": {**row["sparse"], "user": [10**6]}}
    return [
        (b'{"rows": [', 422, "body: malformed JSON"),
        ({"rows": [{**row, "sparse": {**row["sparse"], "nope": [1]}}]}, 422, "rows[0].sparse.nope"),
        ({"rows": [row, user]}, 422, "rows[1].sparse.user[0]"),  # id out of range
        ({"rows": [{**row, "sparse": {**row["sparse"], "item": [-1]}}]}, 422, "rows[0].sparse.item[0]"),
        ({"rows": [{**row, "sparse": {"user": ["x"]}}]}, 422, "rows.0.sparse.user.0"),
        ({"rows": [{**row, "dense": row["dense"] + [1.0]}]}, 422, "rows[0].dense"),
        ({"rows": [row], "extra": 1}, 422, "extra"),
        ({"rows": []}, 422, "rows"),
        ({"rows": [row] * 65}, 413, "rows"),  # more rows than max_rows
        ({"rows": [{**row, "sparse": {"tags": [0] * 20000}}]}, 413, "body"),  # over max_body_bytes
    ]


def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(served: Dict[str, Any]) -> None:
    url = served["url"]
    for body, status, field in _bad_requests(served["rows"]):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(url + "/score", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (field, r.text)
        assert field in r.json()["detail"], (field, r.text)
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        ok = httpx.post(url + "/score", json={"rows": served["rows"][:2]})
        assert ok.status_code == 200
        _check(ok.json()["scores"], served["expected"], slice(0, 2))
    r = httpx.post(url + "/recommend", json={"user": 10**9})
    assert r.status_code == 422 and "user" in r.json()["detail"]


def _burst(url: str, rows: List[Dict[str, Any]], n: int) -> List[httpx.Response]:
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda i: client.post(url + "/score", json={"rows": rows[i % 40:i % 40 + 1]}), range(n)))


def test_a_burst_of_concurrent_requests_is_batched(served: Dict[str, Any]) -> None:
    url = served["url"]
    before = httpx.get(url + "/info").json()["batching"]["forwards"]
    responses = _burst(url, served["rows"], 64)
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        _check(r.json()["scores"], served["expected"], slice(i % 40, i % 40 + 1))
    forwards = httpx.get(url + "/info").json()["batching"]["forwards"] - before
    assert 1 <= forwards < 64  # requests shared forwards
    assert httpx.get(url + "/health").status_code == 200


def test_without_batching_every_request_has_its_own_forward(served: Dict[str, Any]) -> None:
    url, server, thread = start_server(create_app(served["export"], ServeOptions(batching=False)))
    try:
        responses = _burst(url, served["rows"], 16)
        for i, r in enumerate(responses):
            _check(r.json()["scores"], served["expected"], slice(i % 40, i % 40 + 1))
        assert httpx.get(url + "/info").json()["batching"]["forwards"] == 16
    finally:
        server.should_exit = True
        thread.join(10)


def test_recommend_equals_the_recommend_command(served: Dict[str, Any]) -> None:
    prepared = prepare_data(served["config"])
    items = catalogue_items(prepared)
    users, positions = seen_pairs(prepared, items)  # (user index, position of the item in items)
    seen_items = items[positions]
    user = int(prepared.splits["train"].extras["user"][0])
    r = httpx.post(served["url"] + "/recommend", json={"user": user, "k": 5})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = recommend(served["run"], [user], k=5)[0]
    assert got["by"] == expected["by"] == "fused" and len(got["items"]) == 5
    assert [it["item"] for it in got["items"]] == [it["item"] for it in expected["items"]]
    torch.testing.assert_close(torch.tensor([it["score"] for it in got["items"]]),
                               torch.tensor([it["score"] for it in expected["items"]]), rtol=1e-5, atol=1e-6)
    assert not {it["item"] for it in got["items"]} & set(seen_items[users == user].tolist())
