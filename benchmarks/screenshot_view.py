"""Screenshot of ``patchworks view`` on the demo output, under a virtual X server.

    apt-get install -y xvfb && pip install -e ".[napari]" PyQt5
    xvfb-run -a -s "-screen 0 1400x1000x24" python benchmarks/screenshot_view.py docs/view.png

``QT_QPA_PLATFORM=offscreen`` gives napari no OpenGL context and
``show=False`` a blank canvas, hence the virtual X server.
"""

import sys
import tempfile
from pathlib import Path

from patchworks._demo import run_demo
from patchworks._napari import view


def main(png="view.png"):
    out = Path(tempfile.mkdtemp()) / "demo"
    run_demo(out, shape=(48, 256, 256), tile=(16, 64, 64))
    viewer = view(out / "sample.zarr", [out / "labels.zarr"], show=True)
    viewer.dims.set_point(0, 24)
    layer = viewer.layers[-1]
    print("layers:", [(lay.name, type(lay).__name__, lay.data.shape) for lay in viewer.layers])
    print("features:", list(layer.features.columns)[:6], len(layer.features), "rows")
    viewer.screenshot(png, canvas_only=False)
    viewer.close()
    print("screenshot:", png)


if __name__ == "__main__":
    main(*sys.argv[1:])
