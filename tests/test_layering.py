"""The house's layering rules, read from the source (every import, at any depth of a module).

The pipeline runs one way — syntax → check → plan → run → report — with operators (``ops``,
``extrap``) plugged in through the registry and ``checkpoints`` as a library beneath them:

- ``syntax`` and ``check`` import no torch and no networkx (``mlspec check`` stays fast);
- ``run`` imports no operator and no checkpoint code (it reaches operators through the registry);
- ``report`` imports no operator internals (it reads records);
- ``values``, ``errors`` and ``registry`` import nothing above them;
- ``checkpoints`` imports no operator; operators import neither the CLI nor the report.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "interpreter"

#: module prefix -> prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "mlspec.syntax": ("torch", "networkx", "mlspec.check", "mlspec.plan", "mlspec.run", "mlspec.ops",
                      "mlspec.extrap", "mlspec.checkpoints", "mlspec.report", "mlspec.study", "mlspec.cli"),
    "mlspec.check": ("torch", "networkx", "mlspec.run", "mlspec.ops", "mlspec.extrap", "mlspec.checkpoints",
                     "mlspec.report", "mlspec.study", "mlspec.cli"),
    "mlspec.plan": ("torch", "mlspec.run", "mlspec.ops", "mlspec.extrap", "mlspec.checkpoints", "mlspec.report",
                    "mlspec.study", "mlspec.cli"),
    "mlspec.run": ("mlspec.ops", "mlspec.extrap", "mlspec.checkpoints", "mlspec.report", "mlspec.study",
                   "mlspec.cli"),
    "mlspec.report": ("mlspec.ops", "mlspec.extrap", "mlspec.checkpoints", "mlspec.run.executor", "mlspec.cli"),
    "mlspec.values": ("mlspec.syntax", "mlspec.check", "mlspec.plan", "mlspec.run", "mlspec.ops", "mlspec.extrap",
                      "mlspec.checkpoints", "mlspec.report", "mlspec.study", "mlspec.cli", "mlspec.registry"),
    "mlspec.errors": ("mlspec.syntax", "mlspec.check", "mlspec.plan", "mlspec.run", "mlspec.ops", "mlspec.extrap",
                      "mlspec.checkpoints", "mlspec.report", "mlspec.study", "mlspec.cli", "mlspec.values",
                      "torch"),
    "mlspec.registry": ("mlspec.syntax", "mlspec.check", "mlspec.plan", "mlspec.run", "mlspec.ops",
                        "mlspec.extrap", "mlspec.checkpoints", "mlspec.report", "mlspec.study", "mlspec.cli",
                        "torch"),
    "mlspec.checkpoints": ("mlspec.ops", "mlspec.extrap", "mlspec.run.executor", "mlspec.report", "mlspec.study",
                           "mlspec.cli"),
    "mlspec.ops": ("mlspec.cli", "mlspec.report", "mlspec.study", "mlspec.run.executor"),
    "mlspec.extrap": ("mlspec.cli", "mlspec.report", "mlspec.study", "mlspec.run.executor"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["mlspec", *parts])


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative imports resolved), with line numbers."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        for prefix, banned in RULES.items():
            if name != prefix and not name.startswith(prefix + "."):
                continue
            for line, module in imports(path):
                for ban in banned:
                    if module == ban or module.startswith(ban + "."):
                        out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {module}")
    return sorted(set(out))


def test_every_module_keeps_the_layering_rules() -> None:
    assert _violations() == []


def test_the_rules_catch_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself is checked: a planted upward import is found, relative or absolute."""
    fake = tmp_path / "interpreter"
    (fake / "run").mkdir(parents=True)
    (fake / "run" / "bad.py").write_text("def f():\n    from ..ops.merge import kernels\n    import torch\n")
    (fake / "syntax").mkdir()
    (fake / "syntax" / "bad.py").write_text("import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = _violations()
    assert any("mlspec.run.bad imports mlspec.ops.merge" in v for v in found)
    assert any("mlspec.syntax.bad imports torch" in v for v in found)


def test_checking_a_spec_imports_neither_torch_nor_networkx() -> None:
    spec = Path(__file__).resolve().parents[1] / "specs" / "quickstart.merge"
    code = ("import sys, mlspec\nfrom mlspec.check.lower import lower\nfrom mlspec.syntax.parser import parse_file\n"
            f"lower(parse_file({str(spec)!r}))\n"
            "print(sorted(m for m in ('torch', 'networkx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
