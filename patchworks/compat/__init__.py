"""Drop-in modules with the names and meanings of the tools our users come from.

``patchworks.compat.patchly`` and ``patchworks.compat.careamics`` keep those
libraries' signatures on top of our engines; they import only the public API
(``patchworks``) and the pure geometry of ``patchworks.grid``.
"""
