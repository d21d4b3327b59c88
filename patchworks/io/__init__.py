"""Reading and writing images: any source opened lazily (numpy, dask, zarr, OME-Zarr, TIFF, HDF5, .npy), NGFF metadata.

Imports only ``patchworks.grid``. Start reading at ``_sources.open_image`` (what a tile task reads from)
and ``_sources.create_output`` (the zarr arrays results are written to); ``_ngff`` parses OME-Zarr metadata.
"""
