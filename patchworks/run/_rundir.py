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

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import dask.array as da
import zarr
from dask.base import tokenize

from ..io._sources import LazySource, create_output, same_location

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


def source_token(source) -> str:
    if isinstance(source, LazySource):
        return tokenize(source.description, source.shape, str(source.dtype))
    if isinstance(source, da.Array):
        return source.name
    return tokenize(source)  # numpy: hashes the data


def describe_source(image, source) -> str:
    if isinstance(source, LazySource):
        return source.description
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return str(image)
    return f"{type(source).__name__} {tuple(source.shape)} {source.dtype}"


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
    write_to : path or None
        The output store; None means a fresh temporary directory (no resume).
    component : str or None
        Array inside a group at ``write_to``.
    fingerprint : str
        Token of everything that decides the result.
    describe : dict
        The same, human-readable, for the message that refuses to mix runs.
    """

    def __init__(self, write_to, component, *, fingerprint: str, describe: dict, overwrite: bool, resume: bool,
                 zarr_format: int, scratch_dir=None, inputs=(), into_image: bool = False):
        self.fingerprint, self.describe = fingerprint, describe
        self.component, self.overwrite, self.zarr_format = component, overwrite, zarr_format
        self.temporary = write_to is None
        self.created = self.finished = False
        if self.temporary:
            self.root = Path(tempfile.mkdtemp(prefix="patchworks-", dir=scratch_dir))
            self.path = self.target = self.root / "labels.zarr"
            self.scratch = self.root / f"{_SCRATCH_PREFIX}scratch"
            self.scratch.mkdir()
            return
        self.path = Path(write_to)
        self.target = self.path / component if component else self.path
        for item in inputs:
            # labels written into an image (IMAGE/labels/<name>) may sit next to the array read, never on it
            if same_location(self.target if into_image else write_to, item):
                raise ValueError(f"write_to={str(self.target if into_image else write_to)!r} is the input; "
                                 f"patchworks never writes to its input: choose another output path")
        parent = Path(scratch_dir) if scratch_dir else self.path.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        stem = f"{_SCRATCH_PREFIX}{self.path.name}{'-' + component.replace('/', '_') if component else ''}-"
        self.scratch = parent / f"{stem}{fingerprint[:16]}"
        others = [p for p in parent.glob(f"{stem}*") if p.is_dir() and p != self.scratch]
        if overwrite or not resume:
            for stale in others + [self.scratch]:
                shutil.rmtree(stale, ignore_errors=True)
            others = []
        self.finished = self._check_existing_output(resume)
        if self.finished:
            return
        for other in others:
            raise ValueError(self._mixing_message(other))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        (self.scratch / "run.json").write_text(json.dumps({"fingerprint": fingerprint, **describe}, default=str))

    # -- rules ---------------------------------------------------------------------------
    def _check_existing_output(self, resume: bool) -> bool:
        """True when ``write_to`` already holds this very run, complete (re-run = no-op)."""
        if not self.target.exists():
            return False
        attrs = {}
        try:  # a label image (group) or a plain array: the run record is in its attributes
            attrs = dict(zarr.open(store=str(self.target), mode="r").attrs).get("patchworks", {})
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

    def _mixing_message(self, other: Path) -> str:
        try:
            before = json.loads((other / "run.json").read_text())
        except (OSError, ValueError):
            before = {}
        now = json.loads(json.dumps(self.describe, default=str))  # tuples -> lists, as stored
        changed = [f"{k} was {before.get(k)!r}, now {v!r}" for k, v in now.items()
                   if k in before and before.get(k) != v]
        what = "; ".join(changed) if changed else "its arguments differ from this call's"
        return (f"write_to={str(self.target)!r} has an unfinished run with other arguments ({what}); "
                f"re-run it with the same arguments to resume it, or pass overwrite=True (or resume=False) "
                f"to discard it and start this one")

    def _take_lock(self) -> None:
        lock = self.scratch / "lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise RuntimeError(f"another patchworks run (pid {pid}) is writing {str(self.target)!r} right "
                                   f"now; wait for it to finish or stop it") from None
            lock.write_text(str(os.getpid()))  # a crashed run's lock: take it over
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))

    # -- outputs -------------------------------------------------------------------------
    def create(self, *, shape, dtype, chunks):
        array = create_output(self.path, shape=shape, dtype=dtype, chunks=chunks, component=self.component,
                              zarr_format=self.zarr_format, overwrite=True if not self.temporary else False,
                              attributes={"patchworks": {"complete": False, "fingerprint": self.fingerprint}})
        self.created = True
        return array

    def create_label_image(self, writer) -> None:
        """Create the label image ``writer`` describes (a group with its levels), marked incomplete."""
        writer.create({"complete": False, "fingerprint": self.fingerprint})
        self.created = True

    def open_existing(self):
        """The finished output: a zarr group (label image) or array."""
        return zarr.open(store=str(self.target), mode="r")

    def mark_complete(self, output, info: dict) -> None:
        """Record completion, last of all writes (``output``: the array or the label image's group)."""
        output.attrs["patchworks"] = {"complete": True, "fingerprint": self.fingerprint, **info}

    def finish(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def fail(self) -> None:
        """After an error: a temporary run leaves nothing; a named one keeps its scratch to resume."""
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            try:
                (self.scratch / "lock").unlink()
            except OSError:
                pass

    def discard_temporary(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
