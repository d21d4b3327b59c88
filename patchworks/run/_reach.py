"""Can every worker of a cluster reach the run's scratch and output? Checked before any tile runs.

On a cluster whose workers share no file system with the driver (Kubernetes,
dask-gateway, managed Dask), a scratch on the driver's disk is a trap: the
relabel task of a tile that runs on another worker than the one that staged
it finds nothing, or worse, finds another machine's leftovers. So nothing
is left to luck. The driver writes a token (a fresh random value) into each
location; one small task per worker (``Client.run``) reads it back and
writes its own answer next to it, which the driver reads in turn. A worker
that cannot read the token, reads a different value (a directory of the same
name on its own disk), or whose answer the driver cannot see, is a worker
that does not share the location, and the run is refused with an error
saying to pass a ``scratch_dir`` URL in an object store.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from ..io._scratch import Scratch

logger = logging.getLogger("patchworks")

__all__ = ["check_workers_reach"]


def _probe_on_worker(scratch: Scratch, key: str, expected: str, dask_worker=None) -> dict:
    """Runs on each worker: read the driver's token, answer with one of its own."""
    name = getattr(dask_worker, "name", None) or str(os.getpid())
    out = {"host": socket.gethostname(), "pid": os.getpid(), "ok": False, "error": None, "answer": None}
    try:
        seen = scratch.get(key).decode()
    except Exception as exc:  # noqa: BLE001 -- any failure means "cannot read it"
        out["error"] = f"cannot read {scratch}/{key} ({type(exc).__name__}: {exc})"
        return out
    if seen != expected:
        out["error"] = f"{scratch}/{key} holds another value there: a different directory of the same name"
        return out
    answer = f"{key}-{uuid.uuid4().hex[:8]}-{str(name).replace('/', '_').replace(':', '_')}"
    try:
        scratch.put(answer, expected.encode())
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"cannot write to {scratch} ({type(exc).__name__}: {exc})"
        return out
    out["ok"], out["answer"] = True, answer
    return out


def check_workers_reach(client, locations, *, parameter: str = "scratch_dir") -> None:
    """Refuse a run whose scratch or output some worker of ``client`` cannot share with the driver.

    Parameters
    ----------
    client : distributed.Client or None
        None (threads, processes on this machine): nothing to check.
    locations : sequence of Scratch
        The run's scratch (and a local output's directory): each must be
        the very same location on the driver and on every worker.
    """
    if client is None or not hasattr(client, "run"):
        return
    host = socket.gethostname()
    for scratch in locations:
        key = f".patchworks-probe-{uuid.uuid4().hex[:12]}"
        token = uuid.uuid4().hex
        if not scratch.remote:
            scratch.path.mkdir(parents=True, exist_ok=True)
        scratch.put(key, token.encode())
        answers = []
        try:
            replies = client.run(_probe_on_worker, scratch, key, token)
            bad = {}
            for worker, reply in replies.items():
                if not reply["ok"]:
                    bad[worker] = reply
                    continue
                answers.append(reply["answer"])
                try:
                    back = scratch.get(reply["answer"]).decode()
                except (OSError, ValueError):
                    back = None
                if back != token:
                    bad[worker] = {**reply, "error": f"the driver cannot see what it wrote in {scratch}"}
            if bad:
                others = sorted({r["host"] for r in bad.values() if r["host"] != host})
                where = f" on other hosts ({', '.join(others)})" if others else ""
                detail = "; ".join(f"{w}: {r['error']}" for w, r in bad.items())
                fix = (f"pass {parameter}= a URL in an object store every worker can reach (e.g. "
                       f"{parameter}='s3://bucket/scratch', with storage_options= for its credentials), or a "
                       f"file system shared by the driver and all workers") if not scratch.remote else (
                       "give the workers the same credentials and endpoint as the driver (storage_options= is "
                       "sent with the run; environment variables must be set on the workers too)")
                raise ValueError(
                    f"{parameter}: the run's scratch {str(scratch)!r} is not shared by {len(bad)} of "
                    f"{len(replies)} workers{where} ({detail}); staged tiles written there by one worker would be "
                    f"missing for the others. {fix[0].upper()}{fix[1:]}")
            logger.debug("patchworks: %d workers share %s", len(replies), scratch)
        finally:
            for k in [key, *answers]:
                scratch.remove(k)
