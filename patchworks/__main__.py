"""``python -m patchworks``: the same as the ``patchworks`` command."""

# Guarded: pytest --doctest-modules imports this module and must not run the CLI.
if __name__ == "__main__":
    import sys

    from patchworks.cli import main

    sys.exit(main())
