"""Blend on local threads: fn, weighting and the folds all run on the pool.

The driver thread only submits units (in raster order, a bounded number
ahead) and queues each window's piece on the blocks it reaches. A block is
folded by at most one pool task at a time, which drains its queue in the
order the pieces were queued -- raster order -- so the sums are the same
whatever finishes first, and different blocks fold in parallel with each
other and with the tile functions. A block whose last contributor is folded
is finished (divided by its weight sum, finalised, written) by the task that
folded it. Alive at once: a few units, the pieces still waiting for a fold
(bounded), and the accumulators of the blocks on the processing front, which
``accs`` spills to disk beyond its budget.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ._job import MapJob, unit_task

__all__ = ["stream_local"]


def stream_local(job: MapJob, first, windows_of, accs, *, threads: int, bar=None) -> None:
    """Run every unit of ``job``; ``first`` holds fn's results for unit 0 (already computed)."""
    lay = job.layout
    grid, blocks = lay.grid, lay.blocks
    ahead = threads + 2                                # units in flight: one queued per thread
    max_alive = max((threads + 1) * job.batch_size, 4)  # pieces waiting for folds
    pool = ThreadPoolExecutor(threads)
    cond = threading.Condition()
    queues: dict[int, deque] = {}
    active: set[int] = set()
    folded: dict[int, int] = {}
    refs: dict[int, int] = {}                    # window -> folds of its piece still to come
    order: dict[int, list[int]] = {}             # block -> its contributors (linear, fold order)
    errors: list[BaseException] = []
    state = {"finished": 0}
    n_blocks = 0 if job.direct else blocks.n_tiles

    def contributors(b: int) -> list[int]:
        if b not in order:
            order[b] = [grid.linear_index(t) for t in lay.contributors(blocks.tile(b).index)]
        return order[b]

    def drain(b: int) -> None:
        try:
            block = blocks.tile(b)
            acc = accs.take(b)
            while True:
                with cond:
                    if not queues[b]:
                        if acc is not None:
                            accs.put(b, acc, next_use=order[b][folded[b]])
                        active.discard(b)
                        return
                    i, piece = queues[b].popleft()
                acc = job.fold(acc, piece, grid.tile(i), block)
                del piece
                with cond:
                    folded[b] = folded.get(b, 0) + 1
                    refs[i] -= 1
                    if not refs[i]:
                        del refs[i]
                        cond.notify_all()
                    complete = folded[b] == len(order[b])
                if complete:
                    job.finish(block, acc)
                    with cond:
                        active.discard(b)
                        del queues[b], order[b], folded[b]
                        state["finished"] += 1
                        cond.notify_all()
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the driver thread, which raises it
            with cond:
                errors.append(exc)
                cond.notify_all()

    def queue(u: int, pieces) -> None:
        start = []
        with cond:
            while len(refs) > max_alive and not errors:
                cond.wait()
            if errors:
                raise errors[0]
            for i, piece in zip(job.unit(u), pieces):
                if piece is None:
                    continue
                targets = [blocks.linear_index(b) for b in lay.blocks_of(grid.tile(i).index)]
                refs[i] = len(targets)
                for b in targets:
                    contributors(b)
                    queues.setdefault(b, deque()).append((i, piece))
                    folded.setdefault(b, 0)
                    if b not in active:
                        active.add(b)
                        start.append(b)
        for b in start:
            pool.submit(drain, b)
        if bar is not None:
            bar.update(len(job.unit(u)))

    units: deque = deque()
    try:
        for u in range(job.n_units):
            windows = None if windows_of is None else [windows_of(grid.tile(i)) for i in job.unit(u)]
            units.append((u, pool.submit(unit_task, job, u, windows, first if u == 0 else None)))
            while len(units) >= ahead:
                v, future = units.popleft()
                queue(v, future.result())
        while units:
            v, future = units.popleft()
            queue(v, future.result())
        with cond:
            while state["finished"] < n_blocks and not errors:
                cond.wait()
            if errors:
                raise errors[0]
    finally:
        # on failure, stop queued work and wait for running tasks: nothing writes behind the caller's back
        pool.shutdown(wait=True, cancel_futures=True)

