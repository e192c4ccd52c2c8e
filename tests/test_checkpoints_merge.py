"""Streaming merges of tiny generated Llama checkpoints (hidden 32, 2 layers), checked against the
in-memory operators and against hand-resolved per-tensor settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hs
from safetensors.torch import load_file, save_file

from mlspec.checkpoints import engine, is_checkpoint
from mlspec.checkpoints import settings as st
from mlspec.checkpoints.engine import StreamOptions, stream_merge
from mlspec.checkpoints.layout import CheckpointError
from mlspec.checkpoints.ops import load, merge_checkpoints, streamed
from mlspec.checkpoints.source import Checkpoint
from mlspec.checkpoints.specs import LoadParams, MergeCheckpointsParams
from mlspec.checkpoints.synthetic import llama_config, write_llama
from mlspec.errors import StepError
from mlspec.ops.merge import elementwise, kernels
from mlspec.ops.merge import specs as ms
from mlspec.run.context import StepContext
from mlspec.values import Model

TINY = llama_config(hidden=32, layers=2, intermediate=48, vocab=64, heads=4, dtype="float32")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "base": write_llama(root / "base", TINY, seed=0),
        "a": write_llama(root / "a", TINY, seed=1, base_seed=0, delta=0.2),
        "b": write_llama(root / "b", TINY, seed=2, base_seed=0, delta=0.2, shard_size=7000),
        "c": write_llama(root / "c", TINY, seed=3, base_seed=0, delta=0.2),
    }


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


def _memory(path: Path) -> Model:
    with Checkpoint.open(path) as ck:
        return Model(arch={"type": "llama"}, state={n: ck.tensor(n) for n in ck.names})


def _written(model: Model) -> dict[str, torch.Tensor]:
    assert is_checkpoint(model)
    out: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model.arch["path"]).glob("*.safetensors")):
        out.update(load_file(file))
    return out


CASES: list[tuple[str, Any]] = [
    ("average", ms.AverageParams(weights=[3.0, 1.0])),
    ("task_arithmetic", ms.TaskArithmeticParams(scale=[0.7, -0.3])),
    ("slerp", ms.SlerpParams(t=0.3)),
    ("spherical_mean", ms.SphericalMeanParams(weights=[1.0, 2.0])),
    ("ties", ms.TiesParams(density=0.3)),  # whole-model trim: two streamed threshold passes
    (
        "ties",
        ms.TiesParams(density=0.4, trim="tensor", weights=[1.0, 0.5], weights_at="before", elect="count"),
    ),
    ("dare", ms.DareParams(density=0.6, merge="ties", rescale="l1")),
    ("breadcrumbs", ms.BreadcrumbsParams(density=0.8, gamma=0.05)),
    ("model_stock", ms.ModelStockParams()),
]


@pytest.mark.parametrize("chunk", [1 << 21, 100], ids=["whole", "chunked"])
@pytest.mark.parametrize(("op", "params"), CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)])
def test_streamed_merge_equals_in_memory_operator(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, params: Any, chunk: int
) -> None:
    """Large tensors of element-wise methods are merged in row chunks: the numbers must not change."""
    monkeypatch.setattr(engine, "CHUNK", chunk)
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    mem = {k: _memory(p) for k, p in ckpts.items()}
    impl = getattr(elementwise, op)
    if op == "slerp":
        expected = impl(_ctx(tmp_path), params, a=mem["a"], b=mem["b"])
        got = streamed(op)(_ctx(tmp_path), params, a=refs["a"], b=refs["b"])
    elif op in ("average", "spherical_mean"):
        expected = impl(_ctx(tmp_path), params, models=[mem["a"], mem["b"]])
        got = streamed(op)(_ctx(tmp_path), params, models=[refs["a"], refs["b"]])
    else:
        expected = impl(_ctx(tmp_path), params, base=mem["base"], models=[mem["a"], mem["b"]])
        got = streamed(op)(_ctx(tmp_path), params, base=refs["base"], models=[refs["a"], refs["b"]])
    written = _written(got)
    assert set(written) == set(expected.state)
    for name, tensor in expected.state.items():
        torch.testing.assert_close(written[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    assert got.info["merge"]["total"]["numel"] == expected.info["merge"]["total"]["numel"]
    assert json.loads((Path(got.arch["path"]) / "config.json").read_text())["hidden_size"] == 32


def test_settings_vary_by_name_and_depth_as_resolved_by_hand(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """ties with a density gradient and a by_name weight: each tensor equals the kernel called with
    the hand-resolved values (layer 0 → t = 0, layer 1 → t = 1, non-layer tensors → t = 0)."""
    params = MergeCheckpointsParams.model_validate(
        {
            "method": "ties",
            "trim": "tensor",
            "density": [0.2, 0.6],
            "weights": [{"type": "by_name", "mlp": 2.0, "default": 1.0}, 0.5],
            "out_dtype": "float64",
        }
    )
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    got = _written(
        merge_checkpoints(_ctx(tmp_path), params, base=refs["base"], models=[refs["a"], refs["b"]])
    )
    mem = {k: _memory(p).state for k, p in ckpts.items()}
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
        stream_merge("ties", ckpts["base"], [ckpts["b"], bad], {"density": 0.5}, out)
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
        stream_merge("average", None, [ckpts["b"], more], {}, tmp_path / "o1")
    info = stream_merge(
        "average", None, [more, ckpts["b"]], {}, tmp_path / "o2", options=StreamOptions(extra="base")
    )
    assert info["notes"]["copied"] == ["extra.bias"]
    assert torch.equal(load_file(tmp_path / "o2" / "model.safetensors")["extra.bias"], torch.ones(3))
    info = stream_merge(
        "average", None, [more, ckpts["b"]], {}, tmp_path / "o3", options=StreamOptions(extra="drop")
    )
    assert info["notes"]["dropped"] == ["extra.bias"]


def test_tied_embeddings_are_refused_or_untied_on_request(ckpts: dict[str, Path], tmp_path: Path) -> None:
    tied_cfg = {**TINY, "tie_word_embeddings": True}
    tied = write_llama(tmp_path / "tied", tied_cfg, seed=5, base_seed=0, delta=0.2)
    with pytest.raises(
        CheckpointError, match="'lm_head.weight' is missing from model .*tie_word_embeddings.*tied = untie"
    ):
        stream_merge("average", None, [ckpts["a"], tied], {}, tmp_path / "o")
    info = stream_merge(
        "average", None, [ckpts["a"], tied], {}, tmp_path / "o", options=StreamOptions(tied="untie")
    )
    assert info["notes"]["untied"] == ["lm_head.weight"]
    merged = load_file(tmp_path / "o" / "model.safetensors")
    a, t = load_file(ckpts["a"] / "model.safetensors"), load_file(tied / "model.safetensors")
    torch.testing.assert_close(
        merged["lm_head.weight"], (a["lm_head.weight"] + t["model.embed_tokens.weight"]) / 2
    )
    assert json.loads((tmp_path / "o" / "config.json").read_text())["tie_word_embeddings"] is False


def test_bad_calls_give_clear_errors(ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="ties needs a base model"):
        stream_merge("ties", None, [ckpts["a"], ckpts["b"]], {}, tmp_path / "o")
    with pytest.raises(CheckpointError, match="slerp merges exactly two models"):
        stream_merge("slerp", None, [ckpts["a"]], {}, tmp_path / "o")
    with pytest.raises(CheckpointError, match="weights needs one value per model"):
        stream_merge("average", None, [ckpts["a"], ckpts["b"]], {"weights": [1, 2, 3]}, tmp_path / "o")
    with pytest.raises(CheckpointError, match="trim = model ranks"):
        stream_merge("ties", ckpts["base"], [ckpts["a"], ckpts["b"]], {"density": [0.1, 0.5]}, tmp_path / "o")
    with pytest.raises(CheckpointError, match="ties has no parameter 't'"):
        stream_merge("ties", ckpts["base"], [ckpts["a"]], {"t": 0.5}, tmp_path / "o")
    memory = _memory(ckpts["a"])
    ref = load(_ctx(tmp_path), LoadParams.model_validate({"path": str(ckpts["b"])}))
    with pytest.raises(StepError, match="cannot merge checkpoints with models held in memory"):
        streamed("average")(_ctx(tmp_path), ms.AverageParams(), models=[memory, ref])


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
    params = ms.TiesParams(density=0.3, trim="tensor")
    mem = {k: _memory(p) for k, p in ckpts.items()}
    expected = elementwise.ties(_ctx(tmp_path), params, base=mem["base"], models=[mem["a"], mem["b"]])
    info = stream_merge(
        "ties",
        ckpts["base"],
        [ckpts["a"], ckpts["b"]],
        params.model_dump(),
        tmp_path / "o",
        options=StreamOptions(stats=True),
    )
    want = expected.info["merge"]["total"]
    for key in ("numel", "sparsity", "sign_conflict", "distance_from_base"):
        assert info["total"][key] == pytest.approx(want[key], rel=1e-6), key
    assert set(info["tensors"]) == set(expected.info["merge"]["tensors"])
