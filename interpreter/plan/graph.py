"""The execution plan: steps in a networkx DiGraph, each with a derived seed and a content key.

A step's key hashes its operator and version, its resolved parameters, its inputs' *keys* and (for
operators that use randomness) its seed, which derives from the study seed and the step's name. So
editing one line re-runs exactly the steps downstream of it, and adding a step changes no other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import networkx as nx

from mlspec import registry
from mlspec.plan.steps import Lowered, Step, StudyInfo

__all__ = ["Plan", "build_plan", "derive_seed", "step_key"]


def derive_seed(study_seed: int, step_name: str) -> int:
    digest = hashlib.sha256(f"{study_seed}\x00{step_name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def step_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


@dataclass
class Plan:
    study: StudyInfo
    graph: nx.DiGraph  # node = step name, attribute "step": Step
    families: dict[str, list[str]]
    sources: dict[str, str]

    @cached_property
    def steps(self) -> list[Step]:
        """Steps in a deterministic topological order (declaration order breaks ties); the graph is
        fixed once planned, so the order is computed once."""
        order = {name: i for i, name in enumerate(self.graph.nodes)}
        return [self.graph.nodes[n]["step"] for n in nx.lexicographical_topological_sort(self.graph, key=order.get)]

    def step(self, name: str) -> Step:
        return self.graph.nodes[name]["step"]  # type: ignore[no-any-return]

    def downstream(self, name: str) -> set[str]:
        return set(nx.descendants(self.graph, name))

    def to_dot(self) -> str:
        lines = ["digraph mlspec {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
        for s in self.steps:
            lines.append(f'  "{_esc(s.name)}" [label="{_esc(s.name)}\\n{s.op}"];')
        for a, b in self.graph.edges:
            lines.append(f'  "{_esc(a)}" -> "{_esc(b)}";')
        return "\n".join(lines + ["}"]) + "\n"

    def to_mermaid(self) -> str:
        ids = {s.name: f"s{i}" for i, s in enumerate(self.steps)}
        lines = ["graph LR"]
        for s in self.steps:
            lines.append(f'  {ids[s.name]}["{s.name.replace(chr(34), "#quot;")}<br/><i>{s.op}</i>"]')
        for a, b in self.graph.edges:
            lines.append(f"  {ids[a]} --> {ids[b]}")
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        lines = []
        for s in self.steps:
            ups = s.upstream()
            lines.append(f"{s.name}  [{s.op}]" + (f"  <- {', '.join(ups)}" if ups else ""))
        return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _prune_unused_data(graph: nx.DiGraph) -> None:
    """Data nothing consumes is never generated: `task mazes = maze(...)` used only through
    `mazes(count = 1000)` variants would otherwise make its default set for nothing."""
    data_kinds = (registry.Kind.DATASET, registry.Kind.TASK)
    while True:
        unused = [n for n in graph if graph.out_degree(n) == 0
                  and getattr(registry.get(graph.nodes[n]["step"].op), "output", None) in data_kinds]
        if not unused:
            return
        graph.remove_nodes_from(unused)


def build_plan(lowered: Lowered) -> Plan:
    graph = nx.DiGraph()
    for step in lowered.steps.values():
        graph.add_node(step.name, step=step)
    for step in lowered.steps.values():
        for up in step.upstream():
            graph.add_edge(up, step.name)
    _prune_unused_data(graph)
    families = {f: [n for n in names if n in graph] for f, names in lowered.families.items()}
    plan = Plan(study=lowered.study, graph=graph, families=families, sources=lowered.sources)
    for step in plan.steps:  # topological: inputs' keys exist before they are used
        spec = registry.get(step.op)
        assert spec is not None, step.op
        step.seed = derive_seed(lowered.study.seed, step.name) if spec.uses_seed else None
        inputs = {port: ([plan.step(n).key for n in names] if isinstance(names, list) else plan.step(names).key)
                  for port, names in sorted(step.inputs.items())}
        step.key_parts = {"op": step.op, "version": spec.version, "params": step.params, "inputs": inputs,
                          "seed": step.seed}
        step.key = step_key(step.key_parts)
    return plan
