"""Reading and writing images: sources opened lazily (numpy, dask, zarr, OME-Zarr, TIFF, HDF5, .npy), NGFF, tables.

Imports only ``patchworks.grid``. Start at ``_sources.open_image`` (what tile tasks read, with the voxel size)
and ``_sources.create_output``; ``_ngff`` parses OME-Zarr metadata, ``_ngff_write`` writes label images with
their pyramid, ``_table_store`` keeps object tables in anndata's dataframe layout.
"""
