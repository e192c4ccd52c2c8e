"""What each dialect allows: declaration kinds, the statements that act on models, study options.

The grammar lists the keywords; this module says what they mean. An action statement lowers to
one operator call per (subject × data × axis grid point), its clauses becoming parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field, field_validator

from ..registry import Kind, Params

__all__ = ["DECL_KINDS", "ACTIONS", "ActionRule", "StudyOptions"]

_RESULTS = (Kind.METRICS, Kind.CURVE, Kind.SURFACE, Kind.TABLE, Kind.TRAJECTORIES, Kind.PERMUTATION)

DECL_KINDS: dict[str, dict[str, tuple[Kind, ...]]] = {
    "merge": {
        "data": (Kind.DATASET,),
        "model": (Kind.MODEL,),
        "merge": (Kind.MODEL,),
        "curve": (Kind.CURVE,),
        "surface": (Kind.SURFACE,),
        "analysis": _RESULTS,
    },
    "extrap": {
        "task": (Kind.TASK, Kind.DATASET),
        "data": (Kind.DATASET, Kind.TASK),
        "model": (Kind.MODEL,),
        "axis": (),
        "analysis": _RESULTS,
    },
}


@dataclass(frozen=True)
class ActionRule:
    op: str
    clauses: dict[str, str] = field(default_factory=dict)  # clause keyword -> parameter name
    grid: bool = False  # accepts `along a x b`
    rebinds: bool = False  # the subject's name refers to the result afterwards (`train`)
    needs_on: bool = True
    naming: Callable[[str, str | None, str], str] | None = None

    def step_name(self, model: str, data: str | None, point: str) -> str:
        if self.naming is not None:
            return self.naming(model, data, point)
        text = f"{self.op} {model}" + (f" on {data}" if data else "")
        return text + (f" @ {point}" if point else "")


ACTIONS: dict[str, dict[str, ActionRule]] = {
    "merge": {
        "evaluate": ActionRule(op="evaluate", clauses={"metrics": "metrics", "split": "split"},
                               naming=lambda m, d, p: f"evaluate {m} on {d}"),
    },
    "extrap": {
        "train": ActionRule(op="train_recurrent", rebinds=True,
                            clauses={"epochs": "epochs", "with": "loss", "lr": "lr", "batch": "batch_size",
                                     "iterations": "iterations", "warmup": "warmup", "throttle": "throttle",
                                     "clip": "clip", "validation": "val_fraction"},
                            naming=lambda m, d, p: f"{m}.trained"),
        "evaluate": ActionRule(op="evaluate_extrap", grid=True,
                               clauses={"iterations": "iterations", "correctness": "correctness",
                                        "batch": "batch_size"},
                               naming=lambda m, d, p: f"evaluate {m}" + (f" @ {p}" if p else f" on {d}")),
        "dynamics": ActionRule(op="dynamics",
                               clauses={"iterations": "iterations", "detect": "detect", "window": "window"},
                               naming=lambda m, d, p: f"dynamics {m} on {d}"),
    },
}


class StudyOptions(Params):
    seed: int = Field(default=0, ge=0, description="the study seed every step's seed derives from")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device is auto, cpu, cuda or cuda:N")

