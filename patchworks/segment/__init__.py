"""Built-in tile functions: thresholds and connected components, watershed, LoG/DoG spots.

Imports ``run``, ``io`` and ``grid``. ``_threshold`` holds ``threshold``/``otsu``/``label_components``;
``_instances`` the instance segmenters (``watershed``, ``log_blobs``) that need scikit-image.
"""
