"""The unit of execution: one operator call with resolved parameters and upstream step names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Span

__all__ = ["Step", "StudyInfo", "Lowered", "RESERVED_OUTPUTS", "path_component"]

#: What a run writes in its output folder itself; no export or report may take these names.
RESERVED_OUTPUTS = ("results.json", "provenance.json", "figures")


def path_component(name: str) -> str:
    """``name`` as one harmless path component: a study name is a name, never a path, so
    ``"../x"`` or ``"/etc"`` cannot steer where a run writes."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".")
    return safe[:120] or "study"


@dataclass
class Step:
    name: str  # unique within a study: "a", "ta[0.5]", "c.model", "evaluate a on low"
    op: str
    params: dict[str, Any]  # validated, defaults filled, JSON-able
    inputs: dict[str, str | list[str]]  # port -> upstream step name(s)
    span: Span
    statement: str  # the statement that made it, e.g. "merge ta"
    family: str | None = None  # the sweep it belongs to
    sweep: dict[str, Any] | None = None  # the sweep values of this member
    seed: int | None = None
    key: str = ""
    key_parts: dict[str, Any] = field(default_factory=dict)

    def upstream(self) -> list[str]:
        out: list[str] = []
        for names in self.inputs.values():
            out += names if isinstance(names, list) else [names]
        return out


@dataclass
class StudyInfo:
    name: str
    seed: int
    device: str
    dialect: str
    spec_file: str
    spec_text: str
    question: str
    report_name: str = "report.html"
    python: list[str] = field(default_factory=list)  # `use python` files (resolved), imported to run

    @property
    def folder(self) -> str:
        """The study's name as a folder name (the default output folder, the cache index)."""
        return path_component(self.name)


@dataclass
class Lowered:
    study: StudyInfo
    steps: dict[str, Step]  # in declaration order
    families: dict[str, list[str]]
    sources: dict[str, str]
