"""Micro-batching: the rows of concurrent requests scored by one forward.

Each request's rows wait in a queue; the worker takes every waiting request (up to ``max_rows``
rows), once the oldest has waited ``deadline_ms`` (requests that arrived during the previous forward
have already waited and go at once), runs one forward on a single worker thread, and hands each
request its slice of the scores. Off (``enabled=False``), every request runs its own forward on the
same thread, one after another. A forward that raises fails only the requests of its batch.
"""

import asyncio
import collections
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

import torch

from torchrec_fusion.serving.rows import EncodedRows

Scores = Dict[str, torch.Tensor]
T = TypeVar("T")
_Waiting = Tuple[EncodedRows, "asyncio.Future[Scores]", float]


class MicroBatcher:
    """Scores :class:`EncodedRows` with ``forward``, batching concurrent requests when ``enabled``.

    Call :meth:`start` inside the event loop (the server's startup) and :meth:`stop` at shutdown.

    Example::

        async def demo() -> list:
            batcher = MicroBatcher(lambda rows: {"s": rows.dense.sum(1)}, deadline_ms=5)
            await batcher.start()
            one = EncodedRows(torch.ones(2, 3), {}, {})
            two = EncodedRows(torch.zeros(1, 3), {}, {})
            out = await asyncio.gather(batcher.score(one), batcher.score(two))
            await batcher.stop()
            return [o["s"].tolist() for o in out] + [batcher.forwards]
        assert asyncio.run(demo()) == [[3.0, 3.0], [0.0], 1]
    """

    def __init__(self, forward: Callable[[EncodedRows], Scores], enabled: bool = True, max_rows: int = 4096,
                 deadline_ms: float = 2.0) -> None:
        self.forward, self.enabled, self.max_rows, self.deadline = forward, enabled, max_rows, deadline_ms / 1000
        self.forwards = 0  # forwards run, for /info and the load script
        self.rows = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._pending: Deque[_Waiting] = collections.deque()
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def _count(self, rows: EncodedRows) -> Scores:
        out = self.forward(rows)
        self.forwards += 1
        self.rows += len(rows)
        return out

    async def score(self, rows: EncodedRows) -> Scores:
        """The scores of ``rows`` (each ``[B]`` or ``[B, C]``), from a forward shared with other requests."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self._executor, self._count, rows)
        assert self._wake is not None, "MicroBatcher.start() was not called"
        future: asyncio.Future[Scores] = loop.create_future()
        self._pending.append((rows, future, time.monotonic()))
        self._wake.set()
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the forward thread (a forward of its own: recommendations), in turn with the
        batched forwards."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args))

    def _take(self) -> List[_Waiting]:
        """The waiting requests of the next forward: at least one, then more while within ``max_rows``."""
        batch = [self._pending.popleft()]
        n = len(batch[0][0])
        while self._pending and n + len(self._pending[0][0]) <= self.max_rows:
            n += len(self._pending[0][0])
            batch.append(self._pending.popleft())
        return batch

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                wait = self._pending[0][2] + self.deadline - time.monotonic()
                if wait > 0 and sum(len(p[0]) for p in self._pending) < self.max_rows:
                    await asyncio.sleep(wait)  # let more requests join the forward
                batch = [b for b in self._take() if not b[1].done()]  # a cancelled request needs no scores
                if not batch:
                    continue
                try:
                    scores = await loop.run_in_executor(self._executor, self._count,
                                                        EncodedRows.cat([b[0] for b in batch]))
                except Exception as e:  # the batch's requests get the error; the worker goes on
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                start = 0
                for rows, future, _ in batch:
                    if not future.done():
                        future.set_result({k: v[start:start + len(rows)] for k, v in scores.items()})
                    start += len(rows)
