"""The ``patchworks`` command: label huge images tile by tile from the shell.

Subcommands
-----------
``patchworks label INPUT OUTPUT`` (or ``--into IMAGE --name NAME``)
    Label or segment tile by tile into an OME-NGFF label image with a pyramid
    (``--method``, ``--stitch``, ``--pyramid-levels``, ``--voxel-size``).
``patchworks info PATH``
    Shape, dtype, chunks, axes, levels and scales, number of labels and run attributes.
``patchworks seams PATH``
    Seam quality of a label image without ground truth (exit 1 when flagged).
``patchworks measure LABELS``
    The exact table of objects of any label array (``--image``, ``--out``).
``patchworks view IMAGE [LABELS ...]``
    Open napari with the image and label images over it (``patchworks[napari]``).
``patchworks demo``
    Label a generated volume tiled and whole and check both agree.

Library errors (bad option values, missing input, existing output) are shown
as one line ``patchworks: error: ...`` with exit status 2, like argparse's own
usage errors; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from importlib.metadata import entry_points

# Errors that mean "the user asked for something wrong", not a bug: one line, exit 2.
# OSError covers FileExistsError / FileNotFoundError and also permission or
# connection problems (e.g. an unreachable --scheduler).
_USER_ERRORS = (ValueError, TypeError, ImportError, OSError)
_BUILTIN_METHODS = ("otsu", "threshold")                 # single-channel connected components
_SEGMENTERS = ("watershed", "log", "dog")                # scikit-image instance segmenters
_PLUGINS = ("cellpose", "stardist")                      # patchworks.plugins.<name>
_THRESHOLDED = ("threshold", *_SEGMENTERS)
_METHOD_GROUP = "patchworks.methods"


class CLIError(Exception):
    """A usage problem found after parsing; printed like an argparse error."""


# -- argument types ------------------------------------------------------------------


def per_axis(text: str):
    """Parse ``"64"`` -> 64 or ``"64,512,512"`` -> (64, 512, 512).

    Examples
    --------
    >>> per_axis("8"), per_axis("0, 8,8")
    (8, (0, 8, 8))
    """
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give one int or a comma list of ints, e.g. 64,512,512") from None
    return values[0] if len(values) == 1 else values


def _tile(text: str):
    """``--tile``: per-axis sizes, or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else per_axis(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive int")
    return value


def storage_options_arg(text: str) -> dict:
    """Parse ``--storage-options``: a JSON object, or ``key=value`` pairs separated by commas.

    Dotted keys nest (``client_kwargs.endpoint_url=...``); values are read as
    JSON where they can be (``anon=true``, ``timeout=10``), else kept as text.

    Examples
    --------
    >>> storage_options_arg('{"anon": true}')
    {'anon': True}
    >>> storage_options_arg("key=a,secret=b,client_kwargs.endpoint_url=http://127.0.0.1:9000")
    {'key': 'a', 'secret': 'b', 'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
    """
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object ({exc}); e.g. '{{\"anon\": true}}'") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("give a JSON object, e.g. '{\"anon\": true}'")
        return value
    out: dict = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{pair!r}: give key=value pairs (e.g. anon=true,"
                                             "client_kwargs.endpoint_url=http://host:9000) or a JSON object")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


class _MergeOptions(argparse.Action):
    """``--storage-options`` given several times: the dicts are merged, later keys win."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **value}
            merged[key] = value
        setattr(namespace, self.dest, merged)


def _add_storage_options(p) -> None:
    p.add_argument("--storage-options", type=storage_options_arg, action=_MergeOptions, default=None,
                   metavar="OPTS", help="fsspec options for URL inputs (s3://, gs://, az://, http(s)://): a JSON "
                   "object or key=value pairs, e.g. client_kwargs.endpoint_url=http://host:9000,anon=true "
                   "(default: the backend's environment variables, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)")


def _shape(text: str) -> tuple[int, ...]:
    value = per_axis(text)
    shape = (value,) if isinstance(value, int) else value
    if any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be >= 1")
    return shape


# -- methods -------------------------------------------------------------------------


def _registered_methods() -> dict:
    """Entry points other packages register under ``patchworks.methods`` (name -> EntryPoint)."""
    return {ep.name: ep for ep in entry_points(group=_METHOD_GROUP)}


def _load_spec(spec: str):
    """``module:attr`` (attr may be dotted) -> the object, with errors naming the spec."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"--method {spec!r}: expected module:function, e.g. mypkg.seg:label_tile")
    # like `python -m`, find modules in the current directory (the console script does not)
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise CLIError(f"--method {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"--method {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _method_name(args) -> str:
    if args.method is None:  # --threshold alone means a fixed threshold; otherwise Otsu
        return "threshold" if args.threshold is not None else "otsu"
    return args.method


def build_method(args, out=None):
    """The tile function that ``--method`` (and ``--threshold``) ask for."""
    import patchworks

    method = _method_name(args)
    if args.threshold is not None and method not in _THRESHOLDED:
        raise CLIError(f"--threshold applies to --method {', '.join(_THRESHOLDED)} (got --method {method})")
    _check_method_options(args, method)
    if method in _SEGMENTERS:
        return _segmenter(args, method, out)
    if method in _PLUGINS:
        return _plugin(args, method)
    if method == "threshold":
        if args.threshold is None:
            raise CLIError("--method threshold needs a value: add --threshold V (foreground is image > V)")
        return patchworks.threshold(args.threshold)
    if method == "otsu":
        fn = patchworks.otsu(args.input, component=args.component, level=args.level, channel=args.channel,
                             storage_options=args.storage_options)
        print(f"otsu threshold: {fn.value:.6g}", file=out or sys.stdout)
        return fn
    if ":" in method:
        fn = _load_spec(method)
    else:
        registered = _registered_methods()
        if method not in registered:
            names = sorted(set(_BUILTIN_METHODS) | set(registered))
            raise CLIError(f"--method {method!r}: unknown method; available: {', '.join(names)}, "
                           f"or module:function")
        try:
            fn = registered[method].load()
        except Exception as exc:  # a broken plugin must not look like a patchworks bug
            raise CLIError(f"--method {method!r}: could not load entry point "
                           f"{registered[method].value!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise CLIError(f"--method {method!r}: {type(fn).__name__} object is not callable; "
                       "it must be a tile function window -> labels")
    return fn


# which options each method reads: an option given to another method is an error, not ignored
_METHOD_OPTIONS = {"min_distance": ("watershed",), "min_sigma": ("log", "dog"), "max_sigma": ("log", "dog"),
                   "model": _PLUGINS, "diameter": ("cellpose", "watershed"), "gpu": ("cellpose",), "do_3d": ("cellpose",)}


def _check_method_options(args, method: str) -> None:
    for option, methods in _METHOD_OPTIONS.items():
        if getattr(args, option, None) not in (None, False) and method not in methods:
            flag = "--" + option.replace("_", "-").replace("3d", "3D")
            raise CLIError(f"{flag} applies to --method {' / '.join(methods)} (got --method {method})")


def _segmenter(args, method: str, out=None):
    """watershed / log / dog: a threshold given, or Otsu / a noise estimate from the whole input, once."""
    import patchworks

    # image first, as every built-in factory: it checks the channel and estimates what is not given
    source = {"component": args.component, "level": args.level, "channel": args.channel,
              "storage_options": args.storage_options}
    if method == "watershed":
        fn = patchworks.watershed(args.input, threshold=args.threshold, min_distance=args.min_distance,
                                  diameter=args.diameter, **source)
        size = "given" if args.diameter is not None else "estimated" if fn.diameter is not None else "default"
        print(f"watershed threshold: {fn.threshold:.6g}, object diameter: {fn.diameter or 24:.3g} ({size}), "
              f"min_distance: {fn.min_distance}, sigma: {fn.sigma:.3g}",
              file=out or sys.stdout)
        return fn
    sigmas = {k: v for k, v in (("min_sigma", args.min_sigma), ("max_sigma", args.max_sigma)) if v is not None}
    fn = patchworks.log_blobs(args.input, threshold=args.threshold, method=method, **sigmas, **source)
    if args.threshold is None:
        print(f"{method} threshold: {fn.threshold:.6g}", file=out or sys.stdout)
    return fn


def _plugin(args, method: str):
    """cellpose / stardist from patchworks.plugins; the heavy package loads in the tile tasks."""
    # one intensity range for the whole input, never per tile (that would draw seams)
    source = {"image": args.input, "channel_axis": args.channel_axis,
              "open_kwargs": {"component": args.component, "level": args.level, "channel": args.channel,
                              "storage_options": args.storage_options}}
    if method == "cellpose":
        from patchworks.plugins.cellpose import cellpose_fn

        return cellpose_fn(args.model, gpu=args.gpu, diameter=args.diameter, do_3D=args.do_3d, **source)
    from patchworks.plugins.stardist import stardist_fn

    return stardist_fn(**({"model": args.model} if args.model else {}), **source)


# -- subcommands ---------------------------------------------------------------------


def cmd_label(args) -> int:
    import patchworks

    # Check the input before the Otsu estimate, which reads a sample of the image. An existing
    # output is tile_process's call: the same command re-run resumes or is a no-op.
    source = patchworks.open_image(args.input, component=args.component, level=args.level, channel=args.channel,
                                   storage_options=args.storage_options)
    axes = getattr(source, "axes", None) or ""
    if _method_name(args) in (*_BUILTIN_METHODS, *_SEGMENTERS) and "c" in axes:
        # the built-in methods threshold a single-channel image; say so before any work
        n = source.shape[axes.index("c")]
        raise CLIError(f"{args.input!r} has {n} channels (axes {axes}); --method "
                       f"{_method_name(args)} labels one channel: pick it with --channel 0..{n - 1}")
    if (args.output is None) == (args.into is None):
        raise CLIError("give OUTPUT (a new label image) or --into IMAGE --name NAME (IMAGE/labels/NAME), not both"
                       if args.output is not None else "give OUTPUT, or --into IMAGE --name NAME")
    if args.into is not None and not args.name:
        raise CLIError("--into needs --name NAME: the label image is written as IMAGE/labels/NAME")
    if args.unit is not None and args.voxel_size is None:
        raise CLIError("--unit applies to --voxel-size: give both, e.g. --voxel-size 2,0.5,0.5 --unit micrometer")
    voxel_size = None
    if args.voxel_size is not None:
        voxel_size = tuple((v, args.unit) if args.unit else v for v in args.voxel_size)
    fn = build_method(args)
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    try:
        start = time.perf_counter()
        result = patchworks.tile_process(
            args.input, fn, tile_shape=args.tile, overlap=args.overlap, connectivity=args.connectivity,
            stitch=args.stitch, iou_threshold=args.iou_threshold,
            write_to=args.output, sequential_labels=args.sequential, progress=args.progress, client=client,
            overwrite=args.overwrite, component=args.component, level=args.level, channel=args.channel,
            channel_axis=args.channel_axis, zarr_format=args.zarr_format, return_count=True,
            max_workers=args.max_workers, stage_dir=args.stage_dir, keep_stage=args.keep_stage,
            dry_run=args.dry_run, skip_empty=args.skip_empty, **_table_kwargs(args),
            output_format=args.format, pyramid_levels=args.pyramid_levels, voxel_size=voxel_size,
            labels_into=args.into, name=args.name, storage_options=args.storage_options)
        elapsed = time.perf_counter() - start
    finally:
        if client is not None:
            client.close()
    if args.dry_run:  # tile_process printed the plan; nothing was run or written
        return 0
    labels, n = result
    where = args.output if args.into is None else os.path.join(args.into, "labels", args.name)
    print(f"output:  {where}")
    print(f"shape:   {labels.shape}")
    print(f"dtype:   {labels.dtype}")
    print(f"objects: {n}")
    if args.format == "ngff":
        levels = _label_levels(where)
        print(f"levels:  {len(levels)} ({', '.join('x'.join(map(str, shape)) for _, shape, _ in levels)})")
    print(f"time:    {elapsed:.2f} s")
    _print_table_location(args)
    return 0


def _table_kwargs(args) -> dict:
    return {"table": not args.no_table}


def _print_table_location(args) -> None:
    if not args.no_table:
        where = args.output if args.into is None else os.path.join(args.into, "labels", args.name)
        print(f"table:   patchworks.read_table({where!r})")


def _print_table_info(path, storage_options=None) -> None:
    """The object table's size and columns, for ``patchworks info`` (nothing when there is none)."""
    from pathlib import Path

    from patchworks.io._table_store import _find_table, _open_group, table_columns_of
    from patchworks.io._urls import is_remote

    if not is_remote(path) and not Path(path).is_dir():
        return
    try:
        where = _find_table(path, storage_options)
    except FileNotFoundError:
        return
    record = dict(_open_group(where, storage_options).attrs).get("patchworks") or {}
    print(f"{'table:':<9}{where} ({record.get('n_objects', '?')} objects"
          f"{'' if record.get('complete', True) else ', incomplete'})")
    print(f"{'columns:':<9}{', '.join(table_columns_of(where, storage_options))}")


def cmd_measure(args) -> int:
    import patchworks

    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    try:
        table = patchworks.measure(args.labels, args.image, tile_shape=args.tile, voxel_size=args.voxel_size,
                                   component=args.component, level=args.level,
                                   image_component=args.image_component, channel_axis=args.channel_axis,
                                   client=client, progress=args.progress, out=args.out,
                                   storage_options=args.storage_options)
    finally:
        if client is not None:
            client.close()
    print(f"objects: {len(table)}")
    print(f"columns: {', '.join(['label', *table.columns])}")
    if args.out:
        print(f"written: {args.out}")
    else:
        print(table.head(args.rows).to_string())
    return 0


def cmd_view(args) -> int:
    from patchworks._napari import view

    viewer = view(args.image, args.labels)
    if args.screenshot:
        viewer.screenshot(args.screenshot, canvas_only=False)
        viewer.close()
        return 0
    import napari

    napari.run()
    return 0


def _voxel_size(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes per spatial axis, e.g. 2,0.5,0.5") from None


def _add_table_commands(sub) -> None:
    p = sub.add_parser("measure", help="the exact table of objects of a label image",
                       description="One row per object: voxel count, centroid, bounding box, border contact, "
                                   "and with --image the intensity mean / std / min / max per channel; equal "
                                   "to scikit-image's regionprops_table on the whole image, computed tile by tile.")
    p.add_argument("labels", metavar="LABELS", help="label image: zarr / OME-Zarr, TIFF, HDF5 or .npy (a path or a URL)")
    p.add_argument("--image", metavar="IMAGE", help="intensity image of the same spatial shape")
    p.add_argument("--image-component", metavar="NAME", help="array inside IMAGE's zarr group / HDF5 file")
    p.add_argument("--out", metavar="FILE", help="write the table: .csv, .tsv, .parquet or .zarr")
    p.add_argument("--tile", type=per_axis, metavar="T", help="block read per task (default: the labels' chunks)")
    p.add_argument("--voxel-size", type=_voxel_size, metavar="S", help="voxel size per spatial axis, e.g. 2,0.5,0.5 "
                   "(default: from the metadata)")
    p.add_argument("--channel-axis", type=int, metavar="N", help="channel axis of IMAGE")
    p.add_argument("--rows", type=int, default=5, metavar="N", help="rows to print without --out (default 5)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask.distributed scheduler address")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    _add_source_options(p)
    _add_storage_options(p)
    p.set_defaults(run=cmd_measure)

    p = sub.add_parser("view", help="open napari with an image and its label images",
                       description="Open napari with IMAGE (every level, channels split) and the label images "
                                   "over it (default: those registered in IMAGE/labels), their tables as "
                                   "features. Needs patchworks[napari].")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("labels", metavar="LABELS", nargs="*", help="label images written by patchworks")
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    p.set_defaults(run=cmd_view)


def _label_levels(path, storage_options=None):
    """``[(path, shape, scale)]`` of each level of an OME-Zarr group, or [] when it is not one."""
    import zarr

    from patchworks.io._ngff import parse_multiscales
    from patchworks.io._urls import zarr_store

    try:
        group = zarr.open_group(store=zarr_store(path, storage_options, read_only=True), mode="r")
    except Exception:
        return []
    ms = parse_multiscales(group.attrs)
    if ms is None:
        return []
    return [(p, tuple(group[p].shape), None if ms.scales is None else ms.scales[k]) for k, p in enumerate(ms.paths)]


def _patchworks_attrs(path, component, storage_options=None):
    """The ``patchworks`` attributes of a zarr array (written by ``tile_process``), or None."""
    from pathlib import Path

    import zarr

    from patchworks.io._urls import is_remote, zarr_store

    if not is_remote(path) and not Path(path).is_dir():
        return None
    try:  # a label image (group) or a plain array
        node = zarr.open(store=zarr_store(path, storage_options, read_only=True), mode="r", path=component or "")
    except Exception:  # not zarr at all: nothing to show
        return None
    attrs = node.attrs.get("patchworks")
    return dict(attrs) if isinstance(attrs, dict) else None


def cmd_info(args) -> int:
    import patchworks

    so = args.storage_options
    source = patchworks.open_image(args.path, component=args.component, level=args.level, storage_options=so)
    rows = [("path", args.path), ("shape", source.shape), ("dtype", source.dtype),
            ("chunks", getattr(source, "chunks", None))]
    axes = getattr(source, "axes", None)
    if axes:
        rows.append(("axes", axes))
    voxel = getattr(source, "voxel_size", None)
    if voxel is not None:
        units = getattr(source, "units", None) or (None,) * len(voxel)
        rows.append(("voxel", " x ".join(f"{v:g}" + (f" {u}" if u else "") for v, u in zip(voxel, units))))
    for key, value in rows:
        print(f"{key + ':':<9}{value}")
    levels = _label_levels(_join(args.path, args.component), so)
    if levels:
        print(f"{'levels:':<9}{len(levels)}")
        for path, shape, scale in levels:
            print(f"  {path}: shape {shape}" + (f", scale {tuple(scale)}" if scale is not None else ""))
    attrs = _patchworks_attrs(args.path, args.component, so)
    recorded = attrs.get("n_objects") if attrs and attrs.get("complete") else None
    if recorded is not None:
        print(f"{'objects:':<9}{recorded}")
    elif source.dtype.kind in "iu" and not args.no_count:
        from patchworks.labels._count import count_labels

        print(f"{'objects:':<9}{count_labels(source)}")
    _print_table_info(_join(args.path, args.component), so)
    if attrs:
        print("patchworks attributes:")
        for key, value in attrs.items():
            if key == "levels":
                continue  # shown above
            print(f"  {key}: {value}")
        if attrs.get("complete") is False:
            print("  (incomplete: the run that wrote it did not finish)")
    return 0


def _join(path, component):
    """``path/component`` for a path or a URL (``component`` may be None)."""
    if not component:
        return path
    from patchworks.io._urls import join

    return str(join(path, component))


def cmd_seams(args) -> int:
    import patchworks

    try:
        report = patchworks.seam_report(args.path, tile_shape=args.tile, component=args.component,
                                        tolerance=args.tolerance, storage_options=args.storage_options)
    except ValueError as exc:
        raise CLIError(str(exc).replace("pass tile_shape=", "pass --tile")) from None
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report)
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from patchworks._demo import run_demo

    return run_demo(args.out, shape=args.shape, tile=args.tile)


# -- parser --------------------------------------------------------------------------


def _add_source_options(p):
    p.add_argument("--component", metavar="NAME", help="array inside a zarr group / HDF5 file")
    p.add_argument("--level", type=int, default=0, metavar="N", help="resolution level of a multiscale image")


def build_parser() -> argparse.ArgumentParser:
    from patchworks import __version__

    parser = argparse.ArgumentParser(
        prog="patchworks",
        description="Run a function tile by tile over huge N-D images and merge labels exactly.",
        epilog="Start with: patchworks demo")
    parser.add_argument("--version", action="version", version=f"patchworks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "label", help="label connected components tile by tile into an OME-NGFF label image",
        description="Threshold INPUT and label its connected components tile by tile; the result in OUTPUT "
                    "(an OME-NGFF label image with a pyramid) is the same partition as labelling the whole image "
                    "at once. With --into IMAGE --name NAME the labels go into IMAGE/labels/NAME instead.")
    p.add_argument("input", metavar="INPUT", help="zarr / OME-Zarr store, TIFF, HDF5 or .npy: a path or a URL (s3://, gs://, az://, http(s)://)")
    p.add_argument("output", metavar="OUTPUT", nargs="?", help="label image to write, e.g. cells.ome.zarr "
                   "(omit with --into)")
    p.add_argument("--into", metavar="IMAGE", help="write the labels into this OME-Zarr image, as IMAGE/labels/NAME "
                   "with its levels and scales, listed in IMAGE/labels once complete (nothing else is touched)")
    p.add_argument("--name", metavar="NAME", help="the label image's name (needed with --into)")
    p.add_argument("--pyramid-levels", type=int, metavar="N", help="resolution levels, each halving y and x "
                   "(default: down to about 256 pixels; with --into, the image's)")
    p.add_argument("--voxel-size", type=lambda t: tuple(float(v) for v in t.split(",")), metavar="Z,Y,X",
                   help="physical voxel size per spatial axis (default: read from the input, else 1)")
    p.add_argument("--unit", metavar="U", help="unit of --voxel-size, e.g. micrometer, um, nanometer")
    p.add_argument("--format", choices=("ngff", "array"), default="ngff",
                   help="ngff: OME-NGFF label image with a pyramid (default); array: a bare zarr array")
    p.add_argument("--tile", type=_tile, metavar="T", help="tile core size: one int or one per spatial axis, "
                   "e.g. 64,512,512, or auto (sized to the memory); default: the input's zarr chunks, else auto")
    p.add_argument("--overlap", type=per_axis, default=0, metavar="H",
                   help="halo per side given to the method: one int or one per spatial axis (default 0)")
    p.add_argument("--connectivity", type=int, default=1, metavar="K",
                   help="1 = face neighbours ... ndim = all neighbours (default 1)")
    p.add_argument("--stitch", choices=("touch", "iou"), default="touch",
                   help="touch: join labels touching across a seam (exact for connected components); iou: join "
                        "only mutual best IoU matches in the overlap, so touching cells stay apart (needs "
                        "--overlap, or tiles 1 voxel thick along z)")
    p.add_argument("--iou-threshold", type=float, default=0.5, metavar="F",
                   help="smallest IoU joined by --stitch iou (default 0.5)")
    p.add_argument("--method", metavar="M", help="otsu (default), threshold (needs --threshold), watershed "
                   "(touching round objects), log / dog (spots), cellpose, stardist, a name registered in the "
                   f"{_METHOD_GROUP!r} entry-point group, or module:function. Instance segmenters want "
                   "--stitch iou with an --overlap")
    p.add_argument("--threshold", type=float, metavar="V", help="foreground is image > V (alone: --method "
                   "threshold); for watershed / log / dog the default is estimated once from the whole image")
    p.add_argument("--min-distance", type=int, metavar="N", help="watershed: smallest distance between two "
                   "object centres (default: the object diameter / 5)")
    p.add_argument("--min-sigma", type=float, metavar="S", help="log / dog: smallest spot sigma (default 1)")
    p.add_argument("--max-sigma", type=float, metavar="S", help="log / dog: largest spot sigma (default 4)")
    p.add_argument("--model", metavar="NAME", help="cellpose / stardist model name or path (default cyto3 / "
                   "cpsam by Cellpose version; 2D_versatile_fluo)")
    p.add_argument("--diameter", type=float, metavar="D", help="cellpose, watershed: object diameter in "
                   "pixels (watershed default: estimated from the input)")
    p.add_argument("--gpu", action="store_true", help="cellpose / stardist: run the model on the GPU")
    p.add_argument("--do-3D", dest="do_3d", action="store_true", help="cellpose: 3-D model (else plane by plane)")
    p.add_argument("--sequential", action="store_true", help="number objects 1..n without gaps")
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask.distributed scheduler, e.g. tcp://host:8786 "
                   "(default: local threads)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only on a terminal)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--max-workers", type=_positive, metavar="N",
                   help="tiles processed at once on local threads (default: one per available core)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (tiles, tile and window shapes, memory "
                   "per task, workers, empty tiles with --skip-empty) and stop: no tile is segmented, nothing "
                   "is written")
    p.add_argument("--skip-empty", action="store_true", help="skip tiles whose whole window is at or below "
                   "Otsu's threshold of a sample of the input")
    p.add_argument("--stage-dir", metavar="DIR", help="where the run's scratch (staged tiles) lives (default: "
                   "next to OUTPUT)")
    p.add_argument("--keep-stage", action="store_true", help="keep the scratch after the run completes")
    _add_source_options(p)
    p.add_argument("--channel", type=int, metavar="N", help="use this channel of the c axis only")
    p.add_argument("--channel-axis", type=int, metavar="N", help="axis carried whole into every tile (not tiled)")
    p.add_argument("--zarr-format", type=int, choices=(3, 2), default=None,
                   help="output zarr format: 3 (NGFF 0.5, default) or 2 (NGFF 0.4); with --into, the image's")
    p.add_argument("--no-table", action="store_true", help="do not measure the objects (no table in OUTPUT)")
    _add_storage_options(p)
    p.set_defaults(run=cmd_label)

    p = sub.add_parser("info", help="describe an image or label store",
                       description="Print shape, dtype, chunks, axes, the number of distinct non-zero labels "
                                   "(integer images, counted chunk by chunk) and patchworks run attributes.")
    p.add_argument("path", metavar="PATH")
    _add_source_options(p)
    p.add_argument("--no-count", action="store_true", help="skip counting labels (it reads the whole image)")
    _add_storage_options(p)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("seams", help="check stitching quality of a label image without ground truth",
                       description="Compare how often labels change across the tile seams with interior control "
                                   "planes: seams that are too quiet mean cells fused across them, too busy mean "
                                   "cells cut; and how often objects end there (foreground on one side, "
                                   "background on the other): too often means objects cut off at the seams. "
                                   "Exit status 1 when an axis is flagged.")
    p.add_argument("path", metavar="PATH", help="label image (zarr written by patchworks label, or any source)")
    p.add_argument("--tile", type=per_axis, metavar="T", help="tile core size the labels were made with "
                   "(default: read from the zarr attributes patchworks wrote)")
    p.add_argument("--component", metavar="NAME", help="array inside a zarr group / HDF5 file")
    p.add_argument("--tolerance", type=float, default=2.0, metavar="F",
                   help="flag an axis whose seam / control change ratio leaves [1/F, F], or whose "
                        "object-end ratio exceeds F (default 2)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (SeamReport.to_dict())")
    _add_storage_options(p)
    p.set_defaults(run=cmd_seams)

    _add_table_commands(sub)

    p = sub.add_parser("demo", help="label a generated volume tiled and whole, and compare",
                       description="Generate a blob volume, label it tile by tile and whole, and check that "
                                   "both give the identical partition.")
    p.add_argument("--out", default="patchworks-demo", metavar="DIR",
                   help="where sample.ome.zarr (with its labels inside) goes (default ./patchworks-demo, "
                        "overwritten)")
    p.add_argument("--shape", type=_shape, default=(96, 256, 256), metavar="S", help="volume shape (default 96,256,256)")
    p.add_argument("--tile", type=per_axis, default=(32, 64, 64), metavar="T", help="tile shape (default 32,64,64)")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 demo check failed, 2 error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version / usage error: return the status, callers may be in-process
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except (CLIError, *_USER_ERRORS) as exc:
        print(f"patchworks: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patchworks: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
