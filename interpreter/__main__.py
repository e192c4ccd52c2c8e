"""``python -m mlspec ...`` — the same as the ``mlspec`` command."""

from .cli import entry

entry()
