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


def _kept(scratch: Path) -> bool:
    try:
        return bool(json.loads((scratch / "run.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


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
    temporary_name : str
        Name of the output store inside the temporary directory.
    """

    def __init__(self, write_to, component, *, fingerprint: str, describe: dict, overwrite: bool, resume: bool,
                 zarr_format: int, scratch_dir=None, inputs=(), keep_stage: bool = False,
                 temporary_name: str = "labels.zarr", into_image: bool = False):
        self.fingerprint, self.describe = fingerprint, describe
        self.keep_stage = bool(keep_stage)
        self.component, self.overwrite, self.zarr_format = component, overwrite, zarr_format
        self.temporary = write_to is None
        self.created = self.finished = False
        if self.temporary:
            self.root = Path(tempfile.mkdtemp(prefix="patchworks-", dir=scratch_dir))
            self.path = self.target = self.root / temporary_name
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
        # a stage kept after a finished run (keep_stage=True) is no unfinished run to protect
        others = [p for p in parent.glob(f"{stem}*") if p.is_dir() and p != self.scratch and not _kept(p)]
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
        if not self.keep_stage:
            shutil.rmtree(self.scratch, ignore_errors=True)
            return
        try:
            (self.scratch / "lock").unlink()
        except OSError:
            pass
        info = self.scratch / "run.json"
        try:
            record = json.loads(info.read_text())
        except (OSError, ValueError):
            record = {"fingerprint": self.fingerprint}
        info.write_text(json.dumps({**record, "complete": True}, default=str))
        logger.info("patchworks: stage kept in %s (keep_stage=True)", self.scratch)

    def fail(self, *, discard_output: bool = False) -> None:
        """After an error: a temporary run leaves nothing; a named one keeps its scratch to resume.

        ``discard_output``: a run with nothing to resume (a dense map) removes
        the output it created and its scratch instead.
        """
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
        elif discard_output:
            if self.created:
                shutil.rmtree(self.target, ignore_errors=True)
            self.finish()
        else:
            try:
                (self.scratch / "lock").unlink()
            except OSError:
                pass

    def discard_temporary(self) -> None:
        if self.temporary and self.keep_stage:  # the labels go, the stage stays where it was logged
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
