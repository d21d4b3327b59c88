"""Where a labelling run writes: its output, its scratch, and how it resumes.

A run is identified by a fingerprint of everything that decides its result
(input, geometry, tile function, merge options). Its scratch directory sits
next to the output and carries the fingerprint in its name, so two different
runs never share scratch space, and re-running the same call finds the tiles
it already staged. Completion is recorded last, in the output's attributes,
together with the fingerprint: a finished run re-run is a no-op, and an
output is never marked complete when it is not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from pathlib import Path

import dask.array as da
import zarr
from dask.base import tokenize

from ..io._scratch import Scratch, parent_and_name, same_remote
from ..io._sources import LazySource, create_output, same_location
from ..io._urls import READ_ONLY_PROTOCOLS, filesystem, is_remote, join, protocol_of, zarr_store

logger = logging.getLogger("patchworks")

_SCRATCH_PREFIX = ".patchworks-"


def fn_token(fn) -> str:
    """A token for the tile function that changes when its code or captured values change."""
    code = getattr(fn, "__code__", None)
    try:
        if code is not None:
            cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
            return tokenize(getattr(fn, "__module__", None), getattr(fn, "__qualname__", None),
                            code.co_code, repr(code.co_consts), cells, ensure_deterministic=True)
        return tokenize(fn, ensure_deterministic=True)
    except Exception:  # not deterministically tokenizable: fall back to its pickled bytes
        try:
            import cloudpickle
            return tokenize(cloudpickle.dumps(fn))
        except Exception:
            return f"unpicklable-{type(fn).__qualname__}"


def _short(value, depth: int = 0) -> str:
    """A readable, stable stand-in for a captured value: arrays by shape, dtype and content hash."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype}, hash={tokenize(value)[:8]})"
    if callable(value) and depth < 2 and (hasattr(value, "__code__") or isinstance(value, functools.partial)):
        return str(describe_fn(value, depth + 1))
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    if " at 0x" in text or len(text) > 120:  # addresses change between runs; long reprs say little
        try:
            text = f"<{type(value).__qualname__} hash={tokenize(value, ensure_deterministic=True)[:8]}>"
        except Exception:
            text = f"<{type(value).__qualname__}>"
    return text


def describe_fn(fn, depth: int = 0) -> dict:
    """What identifies the tile function, readably: its name, a hash of its code, and the values it captured.

    Captured values are a closure's cells (by variable name), a
    ``functools.partial``'s arguments and keywords, a dataclass's fields, or
    the attributes of another callable object. This is what a refused resume
    quotes to say what changed; :func:`fn_token` is what decides.
    """
    out: dict = {}
    if isinstance(fn, functools.partial):
        out["partial of"] = _short(fn.func, depth)
        out.update({f"arg {i}": _short(a, depth) for i, a in enumerate(fn.args)})
        out.update({f"keyword {k}": _short(v, depth) for k, v in (fn.keywords or {}).items()})
        return out
    code = getattr(fn, "__code__", None)
    if code is not None:
        out["name"] = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', '?')}"
        out["code"] = tokenize(code.co_code, repr(code.co_consts))[:8]
        for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
            try:
                out[f"captured {var}"] = _short(cell.cell_contents, depth)
            except ValueError:  # an empty cell
                out[f"captured {var}"] = "<empty>"
        return out
    cls = type(fn)
    out["name"] = f"{cls.__module__}.{cls.__qualname__}"
    if dataclasses.is_dataclass(fn):
        fields = {f.name: getattr(fn, f.name, None) for f in dataclasses.fields(fn)}
    else:
        fields = {k: v for k, v in getattr(fn, "__dict__", {}).items() if not k.startswith("_")}
    out.update({f"attribute {k}": _short(v, depth) for k, v in fields.items()})
    return out


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}: "))
        else:
            out[key] = v
    return out


def source_token(source) -> str:
    if isinstance(source, LazySource):
        return tokenize(source.description, source.shape, str(source.dtype))
    if isinstance(source, da.Array):
        return source.name
    strides = getattr(source, "strides", ())
    if 0 in strides:  # a broadcast view: hash the values it repeats, not a full-size copy of them
        return tokenize(source[tuple(0 if s == 0 else slice(None) for s in strides)], source.shape)
    return tokenize(source)  # numpy: hashes the data


def describe_source(image, source) -> str:
    if isinstance(source, LazySource):
        return source.description
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return str(image)
    return f"{type(source).__name__} {tuple(source.shape)} {source.dtype}"


def _kept(scratch: Scratch) -> bool:
    try:
        return bool(json.loads(scratch.get("run.json")).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _siblings(parent, stem: str, storage_options) -> list:
    """Scratch roots under ``parent`` whose name starts with ``stem`` (one listing)."""
    if not is_remote(parent):
        return [p for p in Path(parent).glob(f"{stem}*") if p.is_dir()]
    fs, root = filesystem(str(parent), storage_options, parameter="scratch_dir")
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        try:
            # only the names that start with the stem, filtered by the server (s3fs, gcsfs): a plain listing
            # of a bucket's root pages through every key there, 1000 a request
            entries = list(fs.find(root, maxdepth=1, withdirs=True, detail=True, prefix=stem).values())
        except (TypeError, ValueError, NotImplementedError):  # a filesystem whose find takes no prefix
            entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    scheme = protocol_of(str(parent))
    return [f"{scheme}://{e['name'].rstrip('/')}" for e in entries
            if e.get("type") == "directory" and e["name"].rstrip("/").rsplit("/", 1)[-1].startswith(stem)]


# A running run rewrites its lock's time this often; another host takes over a lock silent for LOCK_STALE_S.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 120.0


def _lock_bytes(me: dict) -> bytes:
    return json.dumps({**me, "time": time.time()}).encode()


class _Heartbeat:
    """A daemon thread that rewrites the run's lock with a fresh time until stopped.

    It stops by itself when the lock is no longer ours (another run took it
    over after this one stalled): the next write this run does is then its
    own lookout, and rewriting the other run's lock would hide that run.
    """

    def __init__(self, scratch, me: dict):
        self.scratch, self.me, self.stop_event = scratch, me, threading.Event()
        self._thread = threading.Thread(target=self._run, name="patchworks-lock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(LOCK_HEARTBEAT_S):
            try:
                held = json.loads(self.scratch.get("lock") or b"{}")
                if not isinstance(held, dict) or held.get("nonce") != self.me["nonce"]:
                    logger.error("patchworks: %s/lock was taken over by another run", self.scratch)
                    return
                self.scratch.put("lock", _lock_bytes(self.me))
            except Exception:  # an unreachable store for a moment: try again at the next beat
                logger.debug("patchworks: lock heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """Output and scratch locations of one run, with the resume rules.

    Parameters
    ----------
    write_to : path, URL or None
        The output store (a local path, ``file://`` or an object-store URL);
        None means a fresh temporary directory (no resume).
    component : str or None
        Array inside a group at ``write_to``.
    fingerprint : str
        Token of everything that decides the result.
    describe : dict
        The same, human-readable, for the message that refuses to mix runs.
    scratch_dir : path or URL, optional
        Parent of the run's scratch; default next to ``write_to``.
    storage_options : dict, optional
        For every URL of the run (output and scratch).
    temporary_name : str
        Name of the output store inside the temporary directory.
    """

    def __init__(self, write_to, component, *, fingerprint: str, describe: dict, overwrite: bool, resume: bool,
                 zarr_format: int, scratch_dir=None, inputs=(), keep_stage: bool = False,
                 temporary_name: str = "labels.zarr", into_image: bool = False, storage_options=None,
                 scratch_parameter: str = "scratch_dir"):
        self.fingerprint, self.describe = fingerprint, describe
        self.keep_stage = bool(keep_stage)
        self.component, self.overwrite, self.zarr_format = component, overwrite, zarr_format
        self.storage_options = storage_options or None
        self.temporary = write_to is None
        self.created = self.finished = False
        self._heartbeat = None  # the lock's heartbeat while this run holds the lock
        for value, name in ((write_to, "labels_into" if into_image else "write_to"), (scratch_dir, scratch_parameter)):
            if protocol_of(value) in READ_ONLY_PROTOCOLS:
                raise ValueError(f"{name}={value!r}: {protocol_of(value)}:// is read-only; write to a local path "
                                 f"or an object store (s3://, gs://, az://) instead")
        if self.temporary:
            local_parent = None if is_remote(scratch_dir) else scratch_dir
            self.root = Path(tempfile.mkdtemp(prefix="patchworks-", dir=local_parent))
            self.path = self.target = self.root / temporary_name
            if is_remote(scratch_dir):
                self.scratch = Scratch(join(scratch_dir, f"{_SCRATCH_PREFIX}{self.root.name}"), storage_options)
            else:
                self.scratch = Scratch(self.root / f"{_SCRATCH_PREFIX}scratch")
                self.scratch.path.mkdir()
            return
        self.remote = is_remote(write_to)
        self.path = str(write_to).rstrip("/") if self.remote else Path(write_to)
        self.target = join(self.path, component) if component else self.path
        for item in inputs:
            # labels written into an image (IMAGE/labels/<name>) may sit next to the array read, never on it
            where = self.target if into_image else write_to
            if same_location(where, item) if not self.remote else same_remote(where, item):
                raise ValueError(f"write_to={str(where)!r} is the input; "
                                 f"patchworks never writes to its input: choose another output path")
        out_parent, out_name = parent_and_name(self.path)
        parent = scratch_dir if scratch_dir else out_parent
        if not is_remote(parent):
            parent = Path(parent)
            parent.mkdir(parents=True, exist_ok=True)
        stem = f"{_SCRATCH_PREFIX}{out_name}{'-' + component.replace('/', '_') if component else ''}-"
        self.scratch = Scratch(join(parent, f"{stem}{fingerprint[:16]}"), storage_options)
        self._check_reachable()
        # a stage kept after a finished run (keep_stage=True) is no unfinished run to protect
        others = [Scratch(p, storage_options) for p in _siblings(parent, stem, storage_options)]
        others = [o for o in others if o != self.scratch and not _kept(o)]
        if overwrite or not resume:
            for stale in others + [self.scratch]:
                stale.remove_all()
            others = []
        self.finished = self._check_existing_output(resume)
        if self.finished:
            return
        for other in others:
            raise ValueError(self._mixing_message(other))
        if not self.scratch.remote:
            self.scratch.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.scratch.put("run.json", json.dumps({"fingerprint": fingerprint, **describe}, default=str).encode())

    # -- rules ---------------------------------------------------------------------------
    def _check_reachable(self) -> None:
        """An object-store output or scratch must answer before any tile runs: errors name the URL."""
        for what, location in (("write_to", self.path), ("scratch_dir", self.scratch.location)):
            if not is_remote(location):
                continue
            probe = Scratch(location, self.storage_options)
            key = f".patchworks-probe-{os.getpid()}-{time.time_ns()}"
            try:
                if what == "write_to":
                    parent, _ = parent_and_name(location)
                    probe = Scratch(parent, self.storage_options)
                probe.put(key, b"ok")
                probe.remove(key)
            except ImportError:
                raise
            except Exception as exc:
                raise _unreachable(what, str(location), exc) from exc

    def _exists(self, location) -> bool:
        if not is_remote(location):
            return Path(location).exists()
        fs, root = filesystem(str(location), self.storage_options, parameter="write_to")
        fs.invalidate_cache(root)
        return bool(fs.exists(root))

    def _open(self, location, mode="r"):
        # an output of this run has the run's format: naming it spares zarr probing both formats' keys
        # (7 reads remotely for a group); one of another format is not this run's anyway
        fmt = {"zarr_format": self.zarr_format} if self.zarr_format in (2, 3) else {}
        if not is_remote(location):
            return zarr.open(store=str(location), mode=mode, **fmt)
        return zarr.open(store=zarr_store(str(location), self.storage_options, read_only=mode == "r",
                                          parameter="write_to"), mode=mode, **fmt)

    def _check_existing_output(self, resume: bool) -> bool:
        """True when ``write_to`` already holds this very run, complete (re-run = no-op)."""
        if not self._exists(self.target):
            return False
        attrs = {}
        try:  # a label image (group) or a plain array: the run record is in its attributes
            attrs = dict(self._open(self.target).attrs).get("patchworks", {})
        except Exception:  # not a zarr node we wrote: the generic message below applies
            attrs = {}
        attrs = attrs if isinstance(attrs, dict) else {}
        same = attrs.get("fingerprint") == self.fingerprint
        if resume and same and attrs.get("complete") and not self.overwrite:
            logger.info("patchworks: %s is already complete for these arguments; nothing to do", self.target)
            return True
        if self.overwrite or (resume and same):
            return False  # replaced, or an unfinished output of this run: relabelled again
        hint = (" (it holds the labels of a call with other arguments)" if attrs and not same else "")
        raise FileExistsError(f"write_to={str(self.target)!r} already exists{hint}; pass overwrite=True to "
                              f"replace it, or choose another path")

    def _mixing_message(self, other: Scratch) -> str:
        try:
            before = json.loads(other.get("run.json"))
        except (OSError, ValueError):
            before = {}
        now = _flat(json.loads(json.dumps(self.describe, default=str)))  # tuples -> lists, as stored
        before = _flat(before)
        changed = [f"{k} was {before.get(k)!r}, now {v!r}" for k, v in now.items()
                   if k in before and before.get(k) != v]
        changed += [f"{k} was {before[k]!r}, now not set" for k in before
                    if k not in now and k != "fingerprint" and ": " in k]
        changed += [f"{k} was not set, now {v!r}" for k, v in now.items() if k not in before and ": " in k]
        what = "; ".join(changed) if changed else (
            "they differ in nothing this version records, e.g. a run by another patchworks version")
        return (f"write_to={str(self.target)!r} has an unfinished run with other arguments ({what}); "
                f"re-run it with the same arguments to resume it, or pass overwrite=True (or resume=False) "
                f"to discard it and start this one")

    def _take_lock(self) -> None:
        """One run at a time per scratch: an exclusive create (``O_EXCL``, or S3's ``If-None-Match``).

        The holder rewrites the lock's time every ``LOCK_HEARTBEAT_S`` while it
        runs (:class:`_Heartbeat`). A lock on this host is stale when its
        process is gone; one from another host (a driver that died on another
        machine of a cluster) when its time is older than ``LOCK_STALE_S``.
        """
        me = {"host": socket.gethostname(), "pid": os.getpid(), "nonce": os.urandom(8).hex()}
        if not self.scratch.create("lock", _lock_bytes(me)):
            try:
                held = json.loads(self.scratch.get("lock") or b"{}")
            except (OSError, ValueError):
                held = {}
            if isinstance(held, int):  # a lock written by an older version: a bare pid
                held = {"host": me["host"], "pid": held}
            held = held if isinstance(held, dict) else {}
            pid, host = int(held.get("pid") or 0), held.get("host", me["host"])
            if host != me["host"] and pid:
                age = time.time() - float(held.get("time", time.time()))  # no time: an older version's, kept
                if age <= LOCK_STALE_S:
                    raise RuntimeError(
                        f"another patchworks run (pid {pid} on host {host!r}) holds {self.scratch}/lock for "
                        f"{str(self.target)!r} (its heartbeat {age:.0f} s ago); it may still be writing. If that "
                        f"run is gone, wait {LOCK_STALE_S - age:.0f} s or delete the lock object, and re-run to "
                        f"resume it")
                logger.warning("patchworks: taking over %s/lock of pid %d on %s, silent for %.0f s",
                               self.scratch, pid, host, age)
            elif pid and pid != os.getpid() and _pid_alive(pid):
                raise RuntimeError(f"another patchworks run (pid {pid}) is writing {str(self.target)!r} right "
                                   f"now; wait for it to finish or stop it") from None
            self.scratch.put("lock", _lock_bytes(me))  # a crashed run's lock: take it over
        self._heartbeat = _Heartbeat(self.scratch, me)
        # a run dropped without finish() or fail() (an error before its pipeline started) stops beating
        weakref.finalize(self, self._heartbeat.stop_event.set)

    def _release_lock(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.scratch.remove("lock")

    # -- outputs -------------------------------------------------------------------------
    def create(self, *, shape, dtype, chunks):
        array = create_output(self.path, shape=shape, dtype=dtype, chunks=chunks, component=self.component,
                              zarr_format=self.zarr_format, overwrite=True if not self.temporary else False,
                              attributes={"patchworks": {"complete": False, "fingerprint": self.fingerprint}},
                              storage_options=self.storage_options)
        self.created = True
        return array

    def create_label_image(self, writer) -> None:
        """Create the label image ``writer`` describes (a group with its levels), marked incomplete."""
        writer.create({"complete": False, "fingerprint": self.fingerprint})
        self.created = True

    def open_existing(self):
        """The finished output: a zarr group (label image) or array."""
        return self._open(self.target)

    def remove_output(self, location) -> None:
        """Remove a store (a replaced run's table, a discarded dense output), local or remote."""
        if not is_remote(location):
            shutil.rmtree(location, ignore_errors=True)
            return
        fs, root = filesystem(str(location), self.storage_options, parameter="write_to")
        try:
            fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass

    def shared_locations(self) -> list:
        """What every cluster worker must share with the driver: the scratch, and a local output's directory."""
        out = [self.scratch]
        if not self.temporary and not self.remote and self.scratch.remote:
            out.append(Scratch(parent_and_name(self.path)[0]))
        elif self.temporary and self.scratch.remote:
            out.append(Scratch(self.root))
        return out

    def exists(self, location) -> bool:
        return self._exists(location)

    def mark_complete(self, output, info: dict) -> None:
        """Record completion, last of all writes (``output``: the array or the label image's group)."""
        output.attrs["patchworks"] = {"complete": True, "fingerprint": self.fingerprint, **info}

    def finish(self) -> None:
        if not self.keep_stage:
            self._release_lock()
            self.scratch.remove_all()
            return
        self._release_lock()
        try:
            record = json.loads(self.scratch.get("run.json"))
        except (OSError, ValueError):
            record = {"fingerprint": self.fingerprint}
        self.scratch.put("run.json", json.dumps({**record, "complete": True}, default=str).encode())
        logger.info("patchworks: stage kept in %s (keep_stage=True)", self.scratch)

    def fail(self, *, discard_output: bool = False) -> None:
        """After an error: a temporary run leaves nothing; a named one keeps its scratch to resume.

        ``discard_output``: a run with nothing to resume (a dense map) removes
        the output it created and its scratch instead.
        """
        if self.temporary:
            if self.scratch.remote:
                self.scratch.remove_all()
            shutil.rmtree(self.root, ignore_errors=True)
        elif discard_output:
            if self.created:
                self.remove_output(self.target)
            self.finish()
        else:
            self._release_lock()

    def discard_temporary(self) -> None:
        if self.temporary and self.keep_stage:  # the labels go, the stage stays where it was logged
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.temporary:
            if self.scratch.remote:
                self.scratch.remove_all()
            shutil.rmtree(self.root, ignore_errors=True)


def _unreachable(what: str, url: str, exc: Exception) -> ValueError:
    """A clear error for an object store that cannot be written: missing bucket, credentials, endpoint."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "nosuchbucket" in low or "bucket" in low and ("not exist" in low or "not found" in low):
        why = "the bucket does not exist; create it first or fix the URL"
    elif any(w in low for w in ("accessdenied", "access denied", "forbidden", "invalidaccesskey",
                                "signaturedoesnotmatch", "credentials", "permission", "403")):
        why = "access was refused: check the credentials (storage_options= key/secret, or the environment)"
    elif any(w in low for w in ("connect", "endpoint", "timeout", "timed out", "name or service", "refused")):
        why = "the endpoint does not answer: check storage_options={'client_kwargs': {'endpoint_url': ...}}"
    elif isinstance(exc, FileNotFoundError):
        why = "the bucket or container does not exist; create it first or fix the URL"
    else:
        why = "it cannot be written"
    return ValueError(f"{what}={url!r}: {why} ({text})")
