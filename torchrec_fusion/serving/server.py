"""``torchrec-fusion serve``: an exported model behind an HTTP JSON API (FastAPI on uvicorn).

Routes:

- ``POST /score`` ``{"rows": [{"dense": [...], "sparse": {"user": [3], "genres": [1, 4]}}]}`` ->
  ``{"scores": [{"like": 0.71, "rating": 3.9, "fused": 0.69}, ...]}``: every task's score and the
  fused one per row, by :class:`~torchrec_fusion.serving.inference_module.InferenceModule`;
- ``POST /recommend`` ``{"user": 42, "k": 10, "by": null, "exclude_seen": true}``: the user's top-k
  items of the catalogue (see :mod:`~torchrec_fusion.serving.catalogue`), when the run's data is
  there to build candidate rows;
- ``GET /health`` and ``GET /info`` (tasks, features and table sizes, dtypes and bytes of the
  tables, limits, batching, forwards run).

Concurrent ``/score`` requests share forwards (:class:`~torchrec_fusion.serving.batching.MicroBatcher`,
``batching=False`` turns it off). A body over ``max_body_bytes`` is refused (413) before it is read
whole, more than ``max_rows`` rows is 413, and a row that does not fit the model is 422 naming its
field; the server keeps serving after each.
"""

import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchrec_fusion.data.batch import MultiTaskBatch
from torchrec_fusion.serving.batching import MicroBatcher
from torchrec_fusion.serving.catalogue import Catalogue
from torchrec_fusion.serving.export import load_exported
from torchrec_fusion.serving.inference_module import InferenceModule, score_names
from torchrec_fusion.serving.rows import EncodedRows, RowEncoder, RowError
from torchrec_fusion.training.config import TrainConfig, read_config_file


@dataclass
class ServeOptions:
    """The server's limits and batching: rows per request, body bytes, micro-batching on/off, its
    deadline and the most rows of one batched forward."""

    max_rows: int = 1024
    max_body_bytes: int = 1 << 20
    batching: bool = True
    deadline_ms: float = 2.0
    max_batch_rows: int = 4096


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dense: List[float] = Field(default_factory=list)
    sparse: Dict[str, List[int]] = Field(default_factory=dict)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: List[Row]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: int
    k: int = Field(10, ge=1, le=1000)
    by: Optional[str] = None
    exclude_seen: bool = True


class ServedModel:
    """An export loaded for serving: the inference module, its row encoder and what ``/info`` tells."""

    def __init__(self, export_dir: str) -> None:
        self.train = load_exported(export_dir)
        self.module = InferenceModule(self.train).eval()
        with open(os.path.join(export_dir, "schema.json")) as f:
            self.schema: Dict[str, Any] = json.load(f)
        self.config = TrainConfig.from_dict(read_config_file(os.path.join(export_dir, "config.yaml")))
        self.encoder = RowEncoder(self.schema["feature_names"], self.schema["num_embeddings"], self.schema["num_dense"])
        self.scores = score_names(self.train)

    def forward(self, rows: EncodedRows) -> Dict[str, torch.Tensor]:
        with torch.inference_mode():
            scores: Dict[str, torch.Tensor] = self.module(rows.dense, rows.kjt())
        return scores

    def forward_batch(self, batch: MultiTaskBatch) -> Dict[str, torch.Tensor]:
        """The scores of a batch of candidate rows, with the retrieval head's vectors (``_user_vectors``,
        ``_item_vectors``) when the model has one."""
        with torch.inference_mode():
            out: Dict[str, torch.Tensor] = self.module(batch.dense_features, batch.sparse_features)
            vectors = self.module.model.retrieval_vectors()
        if vectors is not None:
            out["_user_vectors"], out["_item_vectors"] = vectors
        return out

    def info(self) -> Dict[str, Any]:
        tables = self.schema.get("tables") or {}
        return {"tasks": [{"name": t["name"], "kind": t["kind"]} for t in self.schema["tasks"]],
                "scores": self.scores, "features": self.schema["num_embeddings"], "pooling": self.schema["pooling"],
                "num_dense": self.schema["num_dense"], "arch": self.config.arch, "fusion": self.config.fusion,
                "quantization": self.schema.get("quantization"), "tables": tables,
                "table_bytes": sum(int(t["bytes"]) for t in tables.values())}


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (by its Content-Length, or as it streams in)
    is answered 413 without being read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"detail": f"body: the request body exceeds {self.max_bytes} bytes"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": message, "field": field}, status_code=status)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A request the models refuse: 422 naming the first field that is wrong."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # loc is ("body", character)
        where = [p for p in first.get("loc", ()) if p != "body"]
        return _error(422, "body", f"body: malformed JSON at character {where[0] if where else '?'} "
                                   f"({first.get('msg')})")
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return JSONResponse({"detail": f"{field}: {first.get('msg')}", "field": field, "errors": len(errors)},
                        status_code=422)


def create_app(export_dir: str, options: Optional[ServeOptions] = None, data_dir: Optional[str] = None) -> FastAPI:
    """The FastAPI app serving the export in ``export_dir``; ``data_dir``: where the run's data now
    lies, for ``/recommend`` (default: the config's)."""
    opts = options or ServeOptions()
    served = ServedModel(export_dir)
    batcher = MicroBatcher(served.forward, opts.batching, opts.max_batch_rows, opts.deadline_ms)
    catalogue, why_not = _catalogue(served, data_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="torchrec_fusion", lifespan=lifespan)

    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]

    @app.post("/score")
    async def score(request: ScoreRequest) -> Any:
        if not request.rows:
            return _error(422, "rows", "rows: no rows to score")
        if len(request.rows) > opts.max_rows:
            return _error(413, "rows", f"rows: {len(request.rows)} rows, at most {opts.max_rows} per request")
        try:
            rows = served.encoder.encode([r.model_dump() for r in request.rows])
        except RowError as e:
            return _error(422, e.field, str(e))
        out = await batcher.score(rows)
        lists = {k: v.tolist() for k, v in out.items()}  # a JSONResponse: no jsonable_encoder pass over the floats
        return JSONResponse({"scores": [{k: v[i] for k, v in lists.items()} for i in range(len(rows))]})

    @app.post("/recommend")
    async def recommend(request: RecommendRequest) -> Any:
        if catalogue is None:
            return _error(503, "user", f"recommend is not available: {why_not}")
        try:
            return await batcher.call(catalogue.recommend, served.forward_batch, request.user, request.k,
                                      request.by, request.exclude_seen)
        except RowError as e:
            return _error(422, e.field, str(e))

    @app.get("/health")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> Dict[str, Any]:
        return {**served.info(), "limits": {"max_rows": opts.max_rows, "max_body_bytes": opts.max_body_bytes},
                "batching": {"enabled": opts.batching, "deadline_ms": opts.deadline_ms,
                             "max_batch_rows": opts.max_batch_rows, "forwards": batcher.forwards,
                             "rows": batcher.rows},
                "recommend": catalogue is not None, **({"recommend_unavailable": why_not} if why_not else {})}

    app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)
    return app


def _catalogue(served: ServedModel, data_dir: Optional[str]) -> "tuple[Optional[Catalogue], Optional[str]]":
    """The run's catalogue for ``/recommend``, or None and the reason (no data, no candidate rows)."""
    config = served.config
    if data_dir:
        config = TrainConfig.from_dict({**config.to_dict(), "data_dir": data_dir})
    try:
        catalogue = Catalogue.load(config, {t.name: t.kind for t in served.train.model.tasks})
    except (OSError, ValueError) as e:
        return None, f"the run's data could not be read to build candidate rows ({e}); serve --data-dir DIR"
    if catalogue.candidates(1, True) < len(catalogue.items) and "retrieval" in served.scores:
        catalogue.index_items(served.forward_batch)
    return catalogue, None
