"""``python -m legato.cli``: the ``legato`` program."""

from . import main

main()  # pragma: no cover
