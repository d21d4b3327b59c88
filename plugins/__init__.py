"""Optional adapters to third-party segmenters, importable as ``patchworks.plugins.<name>``.

Each adapter imports its heavy package inside the function that needs it, so
``import patchworks`` never pulls in Cellpose, StarDist or PyTorch.
"""
