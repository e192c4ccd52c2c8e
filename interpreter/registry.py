"""The operator registry: the seam every capability plugs into.

An operator is declared by an :class:`OpSpec` — its name, a pydantic model for its parameters, the
kinds of its inputs and its output, a version that enters the cache key, and the dotted path of the
function that implements it. Declarations live in torch-free ``specs`` modules so that ``mlspec
check`` validates a spec without importing torch; the implementation is imported only when a step
runs.

An implementation has the signature ``fn(ctx: StepContext, params: ParamsModel, **inputs) -> value``
where each input arrives as a loaded value (``mlspec.values``): a ``Model``, a ``Dataset``, a JSON
``Record`` … — a port declared ``many=True`` receives a list.

Adding an operator never touches the grammar: add an ``OpSpec`` to a catalogue module listed in
:data:`CATALOGUES` (or call :func:`register` from one).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import usercache
from .errors import MlspecError

__all__ = [
    "Kind",
    "Port",
    "OpSpec",
    "Params",
    "NoParams",
    "file_fields",
    "register",
    "get",
    "registered",
    "all_ops",
    "names",
    "CATALOGUES",
    "ENTRY_POINTS",
    "PluginError",
    "load_python",
]


class Kind(str, Enum):
    """The kinds of value that flow between steps (what a port accepts, what an operator makes)."""

    MODEL = "Model"
    DATASET = "Dataset"
    TASK = "Task"
    METRICS = "Metrics"
    CURVE = "Curve"
    SURFACE = "Surface"
    PERMUTATION = "Permutation"
    TRAJECTORIES = "Trajectories"
    TABLE = "Table"
    FILE = "File"
    ANY = "Any"

    def accepts(self, other: Kind) -> bool:
        return self is Kind.ANY or other is Kind.ANY or self is other

    @property
    def article(self) -> str:
        return "an" if self.value[0] in "AEIOU" else "a"


class Params(BaseModel):
    """Base class of every operator's parameter model: unknown keys are errors, not ignored."""

    # defer_build: a parameter model builds its validator the first time it validates, so a process
    # that checks a spec pays only for the operators the spec uses (there are over 70).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, defer_build=True)


@functools.cache
def file_fields(params: type[BaseModel]) -> tuple[str, ...]:
    """Parameters that name input files; a spec's relative paths resolve against its own folder.
    Declared with ``Field(..., json_schema_extra={"file": True})``."""
    return tuple(name for name, info in params.model_fields.items()
                 if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("file"))


class NoParams(Params):
    pass


@dataclass(frozen=True)
class Port:
    """One input of an operator. ``many`` ports take a list (``models = [a, b]``) or, when they are
    the last positional port, every remaining positional argument (``average(a, b, c)``)."""

    name: str
    kind: Kind
    many: bool = False
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    inputs: tuple[Port, ...]
    output: Kind
    impl: str | Callable[..., Any]  # "package.module:function" (imported lazily) or the function
    params: type[Params] = NoParams
    version: str = "1"
    uses_seed: bool = False  # when False the derived seed stays out of the cache key
    cacheable: bool = True  # False for side effects that must happen on every run (exports)
    dialects: frozenset[str] = frozenset({"merge", "extrap"})
    #: ``check_inputs(inputs, params)``: a message when a call's inputs cannot work together
    #: (``inputs``: the step name, or list of names, each port received), checked before anything runs.
    check_inputs: Callable[[Mapping[str, Any], Mapping[str, Any]], str | None] | None = None

    def port(self, name: str) -> Port | None:
        return next((p for p in self.inputs if p.name == name), None)

    def load(self) -> Callable[..., Any]:
        if callable(self.impl):
            return self.impl
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    @property
    def summary(self) -> str:
        """The doc's first sentence, whole however the docstring wraps it."""
        paragraph = " ".join(self.doc.strip().split("\n\n")[0].split())
        match = re.match(r"(.+?[.!?])(?=\s+[A-Z`]|$)", paragraph)
        return match.group(1) if match else paragraph


_REGISTRY: dict[str, OpSpec] = {}
_LOADED = False
_PLUGINS_LOADED = False

#: Torch-free modules whose import registers operators. New capabilities add their module here.
CATALOGUES: list[str] = [
    "mlspec.ops.data.specs",
    "mlspec.ops.models.specs",
    "mlspec.ops.scoring",
    "mlspec.ops.merge.specs",
    "mlspec.ops.merge.specs_mergekit",
    "mlspec.ops.landscape.specs",
    "mlspec.extrap.specs",
    "mlspec.ops.checkpoints.specs",
]


def register(spec: OpSpec, *, replace: bool = False) -> OpSpec:
    if not replace and spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"operator {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    if _IMPORTING and spec.name not in _OWNER:
        _OWNER[spec.name] = _IMPORTING[-1]
    return spec


def registered(name: str) -> OpSpec | None:
    """The operator called ``name`` if it is registered already; loads nothing."""
    return _REGISTRY.get(name)


_IMPORTING: list[str] = []  # the catalogues being imported, innermost last
_OWNER: dict[str, str] = {}  # operator -> the catalogue whose import registered it
_IMPORTED: set[str] = set()


def _import_catalogue(module: str) -> None:
    if module in _IMPORTED:
        return
    _IMPORTED.add(module)
    _IMPORTING.append(module)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:  # a catalogue listed before its module exists
        if exc.name is None or not module.startswith(exc.name):
            _IMPORTED.discard(module)
            raise
    except BaseException:
        _IMPORTED.discard(module)
        raise
    finally:
        _IMPORTING.pop()


# --- the catalogue index -------------------------------------------------------------------------
# Which catalogue declares each operator, written after the first full load into the user's cache
# and named by the catalogues' files (path, size, modification time). A lookup imports just that
# catalogue, so checking a spec imports only the catalogues it uses. The index only ever guides: an
# operator it misplaces or lacks sends the lookup to the full load, and it can name nothing but a
# module of CATALOGUES.

_INDEX: dict[str, str] | None = None


def _index_file() -> Path | None:
    root = Path(__file__).resolve().parent
    stamps = []
    for module in CATALOGUES:
        path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
        try:
            st = path.stat()
        except OSError:
            return None
        stamps.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]
    return usercache.directory() / f"catalogue-index-{key}.json"


def _index() -> dict[str, str]:
    global _INDEX
    if _INDEX is None:
        _INDEX = {}
        path = _index_file()
        try:
            data = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            _INDEX = {k: v for k, v in data.items() if isinstance(k, str) and v in CATALOGUES}
    return _INDEX


def _write_index() -> None:
    index = {name: owner for name, owner in _OWNER.items() if owner in CATALOGUES}
    if index == _index() or set(_IMPORTED) != set(CATALOGUES):
        return
    path = _index_file()
    if path is not None:
        usercache.write(path, json.dumps(index, sort_keys=True).encode())


def _ensure_loaded(plugins: bool = True) -> None:
    """Import the catalogues, and with ``plugins`` the installed plug-ins too. Plug-ins cannot replace
    a built-in operator (:func:`register` refuses), so a lookup that a built-in answers needs no
    plug-in: scanning every installed distribution for them costs a spec check more than its parse."""
    global _LOADED, _PLUGINS_LOADED
    if not _LOADED:
        _LOADED = True  # first: catalogues look operators up while they import
        try:
            for module in CATALOGUES:
                _import_catalogue(module)
        except BaseException:
            _LOADED = False  # a long-lived process (the language server) meets the error again, not half a registry
            raise
        _write_index()
    if plugins and not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        try:
            _load_plugins()
        except BaseException:
            _PLUGINS_LOADED = False
            raise


#: Installed packages register operators by naming a module (or an object) in this entry-point group;
#: installed code is trusted, so it loads without --allow-python.
ENTRY_POINTS = "mlspec.operators"


class PluginError(MlspecError):
    """An installed plug-in or a spec's Python file failed to load (the message says which and why)."""


def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        try:
            loaded = ep.load()
        except Exception as exc:
            raise PluginError(f"the installed plug-in {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from None
        if isinstance(loaded, OpSpec):
            register(loaded)


_PYTHON_FILES: dict[str, dict[str, OpSpec]] = {}  # file -> the operators it registered


def load_python(path: str) -> list[str]:
    """Import a spec's ``use python`` file, whose decorators register its operators; returns their
    names. A file is imported again only when another file has since replaced one of its operators.
    Only called when the user allowed it (``--allow-python``). Raises PluginError."""
    import importlib.util
    import sys
    from pathlib import Path

    _ensure_loaded()
    resolved = str(Path(path).resolve())
    known = _PYTHON_FILES.get(resolved)
    if known is not None and all(_REGISTRY.get(n) is spec for n, spec in known.items()):
        return list(known)
    before = dict(_REGISTRY)
    name = "mlspec_user_" + hashlib.sha256(resolved.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        where = ""
        if isinstance(exc, SyntaxError) and exc.lineno:
            where = f" (line {exc.lineno})"
        raise PluginError(f"{Path(path).name}{where}: {type(exc).__name__}: {exc}") from None
    _PYTHON_FILES[resolved] = {n: s for n, s in _REGISTRY.items() if before.get(n) is not s}
    return list(_PYTHON_FILES[resolved])


def get(name: str) -> OpSpec | None:
    """The operator called ``name``: from the catalogue the index names, else after importing every
    catalogue; installed plug-ins are loaded only when no built-in answers."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if not _LOADED:
        owner = _index().get(name)
        if owner is not None:
            _import_catalogue(owner)
            if name in _REGISTRY:
                return _REGISTRY[name]
        _ensure_loaded(plugins=False)
    if name not in _REGISTRY:
        _ensure_loaded()
    return _REGISTRY.get(name)


def all_ops(dialect: str | None = None) -> list[OpSpec]:
    _ensure_loaded()
    return sorted(
        (s for s in _REGISTRY.values() if dialect is None or dialect in s.dialects), key=lambda s: s.name
    )


def names(dialect: str | None = None) -> list[str]:
    return [s.name for s in all_ops(dialect)]
