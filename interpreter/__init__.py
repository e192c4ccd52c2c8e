"""mlspec — a declarative experiment language for model merging and logical extrapolation.

>>> import mlspec
>>> results = mlspec.load("specs/quickstart.merge").run()   # doctest: +SKIP
>>> results["evaluate avg on digits"]["accuracy"]             # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch loads (the CLI, --jobs workers, most API use): waiting OpenMP threads sleep instead
# of spinning, so a busy machine slows a run in proportion instead of collapsing it
# (benchmarks/quickstart.py --busy; see mlspec.run.executor.torch_threads). A user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["load", "loads", "merge_method", "PerModel", "__version__"]

if TYPE_CHECKING:
    from .study import Study


def load(path: Any, **kwargs: Any) -> Study:
    """Parse and prepare a spec file; ``.run()`` runs it, ``.plan`` shows its steps."""
    from .study import load as _load

    return _load(path, **kwargs)


def loads(text: str, file: str = "<spec>.merge", **kwargs: Any) -> Study:
    from .study import loads as _loads

    return _loads(text, file, **kwargs)


def __getattr__(name: str) -> Any:
    """``from mlspec import merge_method, PerModel``: declare a merge method with one function (see
    :mod:`mlspec.ops.merge.user`), imported on first use so ``import mlspec`` stays light."""
    if name in ("merge_method", "PerModel"):
        from .ops.merge import user

        return getattr(user, name)
    raise AttributeError(f"module 'mlspec' has no attribute {name!r}")
