"""``python -m mlspec ...`` — the same as the ``mlspec`` command."""

from mlspec.cli import main

main()
