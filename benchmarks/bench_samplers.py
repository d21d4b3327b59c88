"""Speed of training-patch spec generation: our samplers against CAREamics' patching strategies.

Run from the repository root::

    python benchmarks/bench_samplers.py           # 2-D 2048^2 / patch 64, 3-D 64x256x256 / patch 16x64x64
    python benchmarks/bench_samplers.py --smoke   # tiny sizes, a second or two (CI)

Only geometry is timed: ``spec(i)`` (ours) or ``get_patch_spec(i)`` (CAREamics,
and our drop-in ``patchworks.compat.careamics``) for every index of an epoch,
no data read. Each implementation runs ``--repeats`` rounds, interleaved, and
the best round counts (the machine may be shared: read the ratio, not the
microseconds). CAREamics is optional: ``pip install careamics`` (it needs
torch); without it the table prints the figure issue 11 measured (77 us per
3-D stratified spec) for reference.
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

from patchworks import StratifiedSampler, UniformSampler
from patchworks.compat import careamics as compat

ISSUE_CAREAMICS_US = {"stratified 3-D": 77.0}  # issue 11's figure, for when careamics is not installed


def _careamics():
    for mod in ("careamics.dataset_ng.patching_strategies", "careamics.dataset.patching"):
        try:
            return importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - missing, or its torch / lightning imports fail
            continue
    return None


def _shape_only(shape):
    return np.broadcast_to(np.zeros((), dtype=np.uint8), shape)


def _time(fn, n, calls):
    # one round: ``calls`` specs, cycling through the epoch's indices
    t = time.perf_counter()
    for k in range(calls):
        fn(k % n)
    return (time.perf_counter() - t) / calls * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    cases = ([("2-D", (256, 256), (32, 32)), ("3-D", (16, 64, 64), (8, 16, 16))] if args.smoke else
             [("2-D", (2048, 2048), (64, 64)), ("3-D", (64, 256, 256), (16, 64, 64))])
    repeats = 2 if args.smoke else args.repeats
    calls = 200 if args.smoke else 3000
    cm = _careamics()
    print(f"careamics: {'installed (' + cm.__name__ + ')' if cm else 'not installed: reference figures from issue 11'}")
    print(f"{'case':<18}{'ours us':>10}{'compat us':>11}{'careamics us':>14}  ours/careamics")
    for dim, shape, patch in cases:
        data_shape = (1, 1) + shape
        for kind in ("stratified", "random"):
            if kind == "stratified":
                ours = StratifiedSampler(_shape_only(shape), patch, seed=0)
                drop = compat.StratifiedPatching([data_shape], patch, seed=0)
                ref = cm.StratifiedPatching([data_shape], patch, seed=0) if cm else None
            else:
                ours = UniformSampler(_shape_only(shape), patch, seed=0)
                drop = compat.RandomPatching([data_shape], patch, seed=0)
                ref = cm.RandomPatching([data_shape], patch, seed=0) if cm else None
            n = len(ours)
            assert drop.n_patches == n and (ref is None or ref.n_patches == n)
            t_ours = t_drop = t_ref = float("inf")
            for _ in range(repeats):  # interleaved rounds: a burst of load hits every implementation alike
                t_ours = min(t_ours, _time(ours.spec, n, calls))
                t_drop = min(t_drop, _time(drop.get_patch_spec, n, calls))
                if ref is not None:
                    t_ref = min(t_ref, _time(ref.get_patch_spec, n, calls))
            name = f"{kind} {dim}"
            if ref is None:
                t_ref = ISSUE_CAREAMICS_US.get(name, float("nan"))
                ratio = "(issue's figure)" if name in ISSUE_CAREAMICS_US else "-"
            else:
                ratio = f"{t_ours / t_ref:.2f}"
            print(f"{name:<18}{t_ours:>10.1f}{t_drop:>11.1f}{t_ref:>14.1f}  {ratio}")
    print("ours = StratifiedSampler.spec / UniformSampler.spec; compat = patchworks.compat.careamics "
          "get_patch_spec (our sampler + the dict); best of", repeats, "interleaved rounds of", calls, "specs")


if __name__ == "__main__":
    main()
