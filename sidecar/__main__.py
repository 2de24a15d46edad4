"""``python -m sidecar``: the same CLI as the ``sidecar`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="sidecar")
