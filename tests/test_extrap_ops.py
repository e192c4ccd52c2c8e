"""The .extrap operators through the registry, and the quickstart study end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mlspec import registry
from mlspec.errors import StepError
from mlspec.run.context import StepContext

SPECS = Path(__file__).resolve().parent.parent / "specs"


def ctx(tmp_path: Path, seed: int = 0) -> StepContext:
    return StepContext(name="s", key="k", seed=seed, device="cpu", out_dir=tmp_path, work_dir=tmp_path / "work")


def call(name: str, tmp_path: Path, seed: int = 0, **kwargs):
    spec = registry.get(name)
    ports = {p.name for p in spec.inputs}
    inputs = {k: v for k, v in kwargs.items() if k in ports}
    params = spec.params(**{k: v for k, v in kwargs.items() if k not in ports})
    return spec.load()(ctx(tmp_path, seed), params, **inputs)


def test_extrap_ops_are_registered_for_the_extrap_dialect_only() -> None:
    for name in ("maze", "prefix_sums", "dt_net", "implicit_net", "feedforward",
                 "train_recurrent", "evaluate_extrap", "dynamics"):
        assert registry.get(name).dialects == frozenset({"extrap"})


def test_pipeline_of_ops_gives_json_records(tmp_path: Path) -> None:
    data = call("maze", tmp_path, size=5, count=40)
    assert data["grid"].shape == (40, 7, 7) and data.meta["size"] == 5
    model = call("dt_net", tmp_path, width=4, iterations=2)
    again = call("dt_net", tmp_path, width=4, iterations=2)
    assert all((model.state[k] == again.state[k]).all() for k in model.state)  # init from the step seed
    trained = call("train_recurrent", tmp_path, model=model, on=data, epochs=1, batch_size=16,
                   loss={"type": "progressive_loss", "alpha": 0.5})
    assert trained.info["loss"] == "progressive" and len(trained.info["history"]) == 1
    record = call("evaluate_extrap", tmp_path, model=trained, on=data, iterations=[1, 3], correctness="valid_path")
    json.dumps(record.data)
    assert record["iterations"] == [1, 3] and record["task"]["size"] == 5
    examples = record["mazes"]  # pictures for the report: failures first, compact cells
    verdicts = [m["correct"] for m in examples]
    assert 1 <= len(examples) <= 8 and verdicts == sorted(verdicts)
    assert sum(not v for v in verdicts) == min(4, round(40 * (1 - record["accuracy"][-1])))
    for m in examples:
        assert len(m["input"]) == len(m["target"]) == len(m["prediction"]) == 7 and m["size"] == 5
        cells = {c for row in m["input"] for c in row}
        assert cells <= {0, 1, 2, 3} and {2, 3} <= cells  # wall, open, start, end
        start = next((r, c) for r, row in enumerate(m["input"]) for c, v in enumerate(row) if v == 2)
        assert m["target"][start[0]][start[1]] == 1  # the path starts at the start
    dyn = call("dynamics", tmp_path, model=trained, on=data, iterations=12, window=6, detect=["fixed_point", "deadend"])
    json.dumps(dyn.data)


def test_impossible_or_mismatched_settings_are_step_errors(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="valid"):
        call("maze", tmp_path, generator="percolation", percolation=1.0, size=5, count=5)
    bits = call("prefix_sums", tmp_path, length=8, count=10)
    with pytest.raises(StepError, match="dims = 1"):
        call("evaluate_extrap", tmp_path, model=call("dt_net", tmp_path, width=4), on=bits)
    with pytest.raises(ValidationError, match="odd"):
        registry.get("maze").params(size=8)
    with pytest.raises(ValidationError, match="progressive_loss"):
        registry.get("train_recurrent").params(loss={"type": "focal"})


@pytest.mark.slow
def test_quickstart_extrap_runs_and_extrapolates(quickstart_extrap_run: Any) -> None:
    results, base = quickstart_extrap_run
    data = json.loads((base / "out" / "results.json").read_text())["results"]
    at5 = data["evaluate dt @ size = 5"]
    assert at5["iterations"] == [1, 5, 10, 20]
    assert at5["pixel_accuracy"][-1] > at5["pixel_accuracy"][0]
    assert "limit" in data["dynamics dt on mazes(size = 7, count = 8)"]
    assert results.ok and data["dt.trained"]["arch"]["type"] == "dt_net"
    # Thinking longer helps on 7x7 mazes it never saw in training (the quickstart's finding).
    at7 = data["evaluate dt @ size = 7"]
    assert max(at7["accuracy"][1:]) > at7["accuracy"][0]


def test_diverging_recurrent_training_is_a_clear_error(tmp_path: Path) -> None:
    data = call("maze", tmp_path, size=5, count=32)
    model = call("dt_net", tmp_path, width=4, iterations=2)
    with pytest.raises(StepError, match="training diverged in epoch 1.*lower the learning rate"):
        call("train_recurrent", tmp_path, model=model, on=data, epochs=2, lr=1e9, batch_size=16, warmup=0)
