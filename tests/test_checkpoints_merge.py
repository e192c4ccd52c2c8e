"""Streaming merges of tiny generated Llama checkpoints (hidden 32, 2 layers), checked against the
in-memory operators and against hand-resolved per-tensor settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hs
from safetensors.torch import load_file, save_file
from tiny_checkpoints import TINY, in_memory, tiny_family
from tiny_checkpoints import written as written_tensors

from mlspec.checkpoints import engine
from mlspec.checkpoints import settings as st
from mlspec.checkpoints.engine import StreamOptions, stream_merge
from mlspec.checkpoints.layout import CheckpointError
from mlspec.checkpoints.synthetic import write_llama
from mlspec.errors import StepError
from mlspec.ops.checkpoints.loading import load, merge_checkpoints
from mlspec.ops.checkpoints.specs import LoadParams, MergeCheckpointsParams
from mlspec.ops.merge import kernels
from mlspec.ops.merge import method as methods
from mlspec.ops.merge.apply import BoundMethod, merge
from mlspec.ops.merge.stats import MergeStats
from mlspec.run.context import StepContext


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_family(tmp_path_factory.mktemp("tiny"))


def _ctx(tmp_path: Path, name: str = "m") -> StepContext:
    return StepContext(
        name=name,
        key=name,
        seed=7,
        device="cpu",
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work" / name,
        input_names={"models": ["a", "b"]},
    )


def _stream(method: str, base: Path | None, models: list[Path], params: dict[str, Any], out: Path,
            **options: Any) -> dict[str, Any]:
    """The engine alone, with a bound method (the operator's input checks are not involved)."""
    declared = methods.get(method)
    assert declared is not None
    bound = BoundMethod(declared, declared.normalise(params), len(models), seed=7)
    return stream_merge(bound, base, models, out, options=StreamOptions(**options))


def _inputs(op: str, values: dict[str, Any]) -> dict[str, Any]:
    if op == "slerp":
        return {"a": values["a"], "b": values["b"]}
    if op in ("average", "spherical_mean"):
        return {"models": [values["a"], values["b"]]}
    return {"base": values["base"], "models": [values["a"], values["b"]]}


CASES: list[tuple[str, dict[str, Any]]] = [
    ("average", {"weights": [3.0, 1.0]}),
    ("task_arithmetic", {"scale": [0.7, -0.3]}),
    ("slerp", {"t": 0.3}),
    ("spherical_mean", {"weights": [1.0, 2.0]}),
    ("ties", {"density": 0.3}),  # whole-model trim: two streamed threshold passes
    ("ties", {"density": 0.4, "trim": "tensor", "weights": [1.0, 0.5], "weights_at": "before", "elect": "count"}),
    ("ties", {"density": [0.2, 0.6], "trim": "tensor"}),  # per-model densities
    ("ties", {"density": [0.2, 0.6]}),  # per-model densities, whole-model trim
    ("dare", {"density": 0.6, "merge": "ties", "rescale": "l1"}),
    ("ties", {"density": 0.4, "trim": "tensor", "rescale": "l1"}),  # L1 factors of whole tensors, then chunks
    ("ties", {"density": [0.3, 0.5], "rescale": "l1"}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
    ("breadcrumbs", {"density": [0.8, 0.6], "gamma": [0.05, 0.1], "rescale": "l1"}),
    ("model_stock", {}),
]


@pytest.mark.parametrize("chunk", [1 << 21, 100], ids=["whole", "chunked"])
@pytest.mark.parametrize(("op", "params"), CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_streamed_merge_equals_in_memory_operator(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, params: Any, chunk: int
) -> None:
    """One declaration, two engines: the same numbers, also when large tensors are merged in row
    chunks and when random kernels run on several threads."""
    monkeypatch.setattr(engine, "CHUNK", chunk)
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    expected = merge(op, _ctx(tmp_path), **params, **_inputs(op, mem))
    got = merge(op, _ctx(tmp_path), **params, **_inputs(op, refs))
    written = written_tensors(got)
    assert set(written) == set(expected.state)
    for name, tensor in expected.state.items():
        torch.testing.assert_close(written[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    assert got.info["merge"]["total"]["numel"] == expected.info["merge"]["total"]["numel"]
    assert json.loads((Path(got.path) / "config.json").read_text())["hidden_size"] == 32


def test_settings_vary_by_name_and_depth_as_resolved_by_hand(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """ties with a density gradient and a by_name weight: each tensor equals the kernel called with
    the hand-resolved values (layer 0 → t = 0, layer 1 → t = 1, non-layer tensors → t = 0)."""
    params = MergeCheckpointsParams.model_validate(
        {
            "method": "ties",
            "trim": "tensor",
            # density is per model: a depth gradient shared by every model is a fallback rule's value
            "density": {"type": "by_name", "default": [0.2, 0.6]},
            "weights": [{"type": "by_name", "mlp": 2.0, "default": 1.0}, 0.5],
            "out_dtype": "float64",
        }
    )
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    got = written_tensors(
        merge_checkpoints(_ctx(tmp_path), params, base=refs["base"], models=[refs["a"], refs["b"]])
    )
    mem = {k: in_memory(p).state for k, p in ckpts.items()}
    for name, tensor in got.items():
        density = 0.6 if ".layers.1." in name else 0.2
        weights = [2.0 if "mlp" in name else 1.0, 0.5]
        expected = kernels.ties(
            mem["base"][name],
            [mem["a"][name], mem["b"][name]],
            density=density,
            weights=weights,
            elect="mass",
            weights_at="after",
            normalize=True,
            scale=1.0,
        )
        assert tensor.dtype == torch.float64
        torch.testing.assert_close(tensor, expected.double(), msg=name)


def test_settings_resolution_oracle() -> None:
    assert st.resolve(st.normalise([0.0, 1.0, 0.5]), "x", 0.25) == pytest.approx(0.5)
    assert st.resolve(st.normalise([0.0, 1.0, 0.5]), "x", 0.75) == pytest.approx(0.75)
    rules = st.normalise({"type": "by_name", "self_attn": [0.0, 1.0], "mlp": 0.3, "default": 0.9})
    assert st.resolve(rules, "model.layers.1.self_attn.q_proj.weight", 0.5) == pytest.approx(0.5)
    assert st.resolve(rules, "model.layers.1.mlp.up_proj.weight", 0.5) == 0.3
    assert st.resolve(rules, "model.norm.weight", 0.5) == 0.9
    first_wins = st.normalise([{"filter": "proj", "value": 1}, {"filter": "q_proj", "value": 2}])
    assert st.resolve(first_wins, "q_proj.weight", 0) == 1.0
    with pytest.raises(LookupError, match="no rule matches tensor 'norm'"):
        st.resolve(first_wins, "norm", 0)
    assert st.depth(None, 12) == 0.0 and st.depth(11, 12) == 1.0 and st.depth(0, 1) == 1.0
    for bad, msg in [
        ("x", "must be a number"),
        ([], "at least one point"),
        ({"type": "gradient"}, "by_name"),
    ]:
        with pytest.raises(ValueError, match=msg):
            st.normalise(bad)


@given(hs.lists(hs.floats(-10, 10), min_size=1, max_size=6), hs.floats(0, 1))
def test_gradient_stays_between_its_points_and_hits_its_ends(points: list[float], t: float) -> None:
    value = st.resolve(points, "w", t)
    assert min(points) - 1e-9 <= value <= max(points) + 1e-9
    assert st.resolve(points, "w", 0.0) == pytest.approx(points[0])
    assert st.resolve(points, "w", 1.0) == pytest.approx(points[-1])


def test_mismatched_checkpoints_fail_before_merging_naming_tensor_and_shapes(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    state = load_file(ckpts["a"] / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(40, 32)
    del state["model.norm.weight"]
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, bad / "model.safetensors")
    (bad / "config.json").write_text(json.dumps(TINY))
    out = tmp_path / "merged"
    with pytest.raises(CheckpointError) as info:
        _stream("ties", ckpts["base"], [ckpts["b"], bad], {"density": 0.5}, out)
    message = str(info.value)
    assert "tensor 'model.layers.0.mlp.up_proj.weight' has shape [40, 32] in model" in message
    assert "but [48, 32] in base" in message
    assert "tensor 'model.norm.weight' is missing from model" in message
    assert not out.exists() or not list(out.glob("*.safetensors"))


def test_extra_tensors_are_an_explicit_choice(ckpts: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(ckpts["a"] / "model.safetensors")
    state["extra.bias"] = torch.ones(3)
    more = tmp_path / "more"
    more.mkdir()
    save_file(state, more / "model.safetensors")
    (more / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(CheckpointError, match="tensor 'extra.bias' is missing from model"):
        _stream("average", None, [ckpts["b"], more], {}, tmp_path / "o1")
    info = _stream("average", None, [more, ckpts["b"]], {}, tmp_path / "o2", extra="base")
    assert info["notes"]["copied"] == ["extra.bias"]
    assert torch.equal(load_file(tmp_path / "o2" / "model.safetensors")["extra.bias"], torch.ones(3))
    info = _stream("average", None, [more, ckpts["b"]], {}, tmp_path / "o3", extra="drop")
    assert info["notes"]["dropped"] == ["extra.bias"]


def test_tied_embeddings_are_refused_or_untied_on_request(ckpts: dict[str, Path], tmp_path: Path) -> None:
    tied_cfg = {**TINY, "tie_word_embeddings": True}
    tied = write_llama(tmp_path / "tied", tied_cfg, seed=5, base_seed=0, delta=0.2)
    with pytest.raises(
        CheckpointError, match="'lm_head.weight' is missing from model .*tie_word_embeddings.*tied = untie"
    ):
        _stream("average", None, [ckpts["a"], tied], {}, tmp_path / "o")
    info = _stream("average", None, [ckpts["a"], tied], {}, tmp_path / "o", tied="untie")
    assert info["notes"]["untied"] == ["lm_head.weight"]
    merged = load_file(tmp_path / "o" / "model.safetensors")
    a, t = load_file(ckpts["a"] / "model.safetensors"), load_file(tied / "model.safetensors")
    torch.testing.assert_close(
        merged["lm_head.weight"], (a["lm_head.weight"] + t["model.embed_tokens.weight"]) / 2
    )
    assert json.loads((tmp_path / "o" / "config.json").read_text())["tie_word_embeddings"] is False


def test_bad_calls_give_clear_errors(ckpts: dict[str, Path], tmp_path: Path) -> None:
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    two = [refs["a"], refs["b"]]
    for op, args, message in [
        ("ties", {"models": two}, "ties needs a base model"),
        ("average", {"models": two, "base": refs["base"]}, "average takes no base model"),
        ("average", {"models": two, "weights": [1, 2, 3]}, "weights needs one value per model"),
        ("ties", {"base": refs["base"], "models": two, "density": [0.1, [0.1, 0.5]]}, "trim = model ranks"),
        ("model_stock", {"base": refs["base"], "models": two[:1]}, r"merges at least 2 models \(not 1\)"),
    ]:
        with pytest.raises(StepError, match=message):
            merge(op, _ctx(tmp_path), **args)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        merge("ties", _ctx(tmp_path), base=refs["base"], models=two, t=0.5)
    with pytest.raises(StepError, match="cannot merge checkpoints on disk with models held in memory"):
        merge("average", _ctx(tmp_path), models=[in_memory(ckpts["a"]), refs["b"]])


def test_merge_checkpoints_params_validate_against_the_operator() -> None:
    with pytest.raises(ValueError, match="ties has no parameter 't'"):
        MergeCheckpointsParams.model_validate({"method": "ties", "t": 0.5})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        MergeCheckpointsParams.model_validate(
            {"method": "ties", "density": {"type": "by_name", "mlp": 1.5, "default": 0.1}}
        )
    with pytest.raises(ValueError, match="checkpoint not found"):
        LoadParams.model_validate({"path": "/nonexistent/model"})


def test_merge_statistics_on_request_match_the_in_memory_operator(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    params = {"density": 0.3, "trim": "tensor"}
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    expected = merge("ties", _ctx(tmp_path), **params, base=mem["base"], models=[mem["a"], mem["b"]])
    info = _stream("ties", ckpts["base"], [ckpts["a"], ckpts["b"]], params, tmp_path / "o",
                   stats=MergeStats("ties", params))
    want = expected.info["merge"]["total"]
    for key in ("numel", "sparsity", "sign_conflict", "distance_from_base"):
        assert info["total"][key] == pytest.approx(want[key], rel=1e-6), key
    assert set(info["tensors"]) == set(expected.info["merge"]["tensors"])


def test_statistics_by_row_blocks_equal_the_whole_tensor_formulas(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlspec.ops.merge.sparsify as sp

    monkeypatch.setattr(sp, "_BLOCK", 50)  # 5 rows of 10 per block
    g = torch.Generator().manual_seed(0)
    base = torch.randn(23, 10, generator=g)
    xs = [base + torch.randn(23, 10, generator=g) * (torch.rand(23, 10, generator=g) < 0.5) for _ in range(2)]
    merged = (xs[0] + xs[1]) / 2
    merged[0] = base[0]
    row = MergeStats.measure(merged.bfloat16(), [x.bfloat16() for x in xs], base.bfloat16())
    m, b = merged.bfloat16().double(), base.bfloat16().double()
    ds = [x.bfloat16().double() - b for x in xs]
    assert row["sparsity"] == float(((m - b) == 0).double().mean())
    assert row["sign_conflict"] == float((((ds[0] > 0) & (ds[1] < 0)) | ((ds[0] < 0) & (ds[1] > 0))).double().mean())
    assert row["distance_from_base"] == pytest.approx(float((m - b).norm()), rel=1e-12)
    assert row["distance_to_inputs"] == pytest.approx([float((m - x.bfloat16().double()).norm()) for x in xs], rel=1e-12)


def test_the_streamed_merge_asks_glibc_to_keep_freed_blocks() -> None:
    """mallopt takes both settings where the C library is glibc (a no-op elsewhere), once a process."""
    import platform
    import sys

    from mlspec.checkpoints import memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert memory.keep_freed_memory() is glibc
    assert memory.keep_freed_memory() is glibc  # cached: the setting is process-wide


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_what_the_merge_kept_is_given_back_when_it_ends() -> None:
    """Freed blocks under 32 MB stay in the heap while a merge runs (reused by the next chunk);
    give_back returns them, so a run that goes on after a merge does not carry them."""
    import platform

    import numpy as np

    from mlspec.checkpoints import memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings apply to glibc only")

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    memory.keep_freed_memory()
    blocks = [np.ones(1 << 21) for _ in range(40)]  # 40 blocks of 16 MB, from the heap, touched
    held = resident_mb()
    del blocks
    kept = resident_mb()
    assert memory.give_back() is True
    assert kept > held - 100  # freed, but kept for reuse
    assert resident_mb() < kept - 400  # handed back
