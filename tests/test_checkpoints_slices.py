"""Layer stacking (mergekit ``slices`` / ``passthrough``): the torch-free plan of which source
tensors make each output tensor, mergekit's parameter precedence and gradients within a slice."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.checkpoints.layout import CheckpointError
from mlspec.checkpoints.slices import layer_index, plan_slices

PARTS = ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight")


def llama(layers: int) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    return names + [f"model.layers.{i}.{p}" for i in range(layers) for p in PARTS]


def by_name(plan):  # type: ignore[no-untyped-def]
    return {t.name: t for t in plan.tensors}


def test_passthrough_frankenmerge() -> None:
    """mergekit's orcamini-platy-44layer example, scaled down: A's blocks 0–3 then B's blocks 2–5."""
    plan = plan_slices(
        [{"sources": [{"model": "A", "layer_range": [0, 4]}]}, {"sources": [{"model": "B", "layer_range": [2, 6]}]}],
        {"A": llama(6), "B": llama(6)},
    )
    assert plan.num_hidden_layers == 8
    assert [(layer.sources[0].model, layer.sources[0].layer) for layer in plan.layers] == [
        ("A", 0), ("A", 1), ("A", 2), ("A", 3), ("B", 2), ("B", 3), ("B", 4), ("B", 5),
    ]
    tensors = by_name(plan)
    assert len(tensors) == len(plan.tensors) == 3 + 8 * len(PARTS)
    assert tensors["model.layers.5.mlp.up_proj.weight"].sources[0].tensor == "model.layers.3.mlp.up_proj.weight"
    assert tensors["model.layers.5.mlp.up_proj.weight"].sources[0].model == "B"
    assert tensors["model.layers.5.mlp.up_proj.weight"].layer == 5
    # the embeddings come from the first slice, the final norm and the head from the last (mergekit)
    assert tensors["model.embed_tokens.weight"].sources[0].model == "A"
    assert tensors["model.norm.weight"].sources[0].model == "B"
    assert tensors["lm_head.weight"].sources[0].model == "B"
    assert all(t.copied for t in plan.tensors)
    assert plan.config_from == "A"
    assert plan_slices([{"sources": [{"model": "A", "layer_range": [0, 2]}]}], {"A": llama(6), "B": llama(6)},
                       base_model="B").config_from == "B"


def test_gpt2_names_and_output_order() -> None:
    gpt2 = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"] + [
        f"transformer.h.{i}.attn.c_attn.weight" for i in range(4)
    ]
    plan = plan_slices(
        [{"sources": [{"model": "X", "layer_range": [1, 3]}]}, {"sources": [{"model": "Y", "layer_range": [0, 3]}]}],
        {"X": gpt2, "Y": gpt2},
    )
    names = [t.name for t in plan.tensors]
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert names[-1] == "transformer.ln_f.weight"
    assert [t.sources[0].model for t in plan.tensors if t.layer is None] == ["X", "X", "Y"]
    assert [layer_index(n) for n in names[2:-1]] == [0, 1, 2, 3, 4]
    assert plan.num_hidden_layers == 5


def test_a_slice_of_several_sources_is_merged_layer_by_layer_with_gradients_within_the_slice() -> None:
    """mergekit's gradient-slerp example: t runs over the slice's blocks, 0 outside the blocks."""
    t_rules = [
        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
        {"value": 0.5},
    ]
    plan = plan_slices(
        [{"sources": [{"model": "A", "layer_range": [0, 5]}, {"model": "B", "layer_range": [0, 5]}]}],
        {"A": llama(5), "B": llama(5)},
        method="slerp",
        base_model="A",
        parameters={"t": t_rules},
    )
    tensors = by_name(plan)
    assert [layer.t for layer in plan.layers] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert tensors["model.layers.1.self_attn.q_proj.weight"].parameter("t") == pytest.approx(0.5)
    assert tensors["model.layers.2.mlp.up_proj.weight"].parameter("t") == pytest.approx(0.7)
    assert tensors["model.layers.3.input_layernorm.weight"].parameter("t") == 0.5
    assert tensors["model.embed_tokens.weight"].parameter("t") == 0.5  # t = 0, fallback rule
    layer = tensors["model.layers.4.mlp.up_proj.weight"]
    assert not layer.copied and [s.model for s in layer.sources] == ["A", "B"] and layer.base == "A"


def test_gradient_restarts_in_each_slice_and_a_one_block_slice_reads_t_1() -> None:
    plan = plan_slices(
        [
            {"sources": [{"model": "A", "layer_range": [0, 3]}, {"model": "B", "layer_range": [3, 6]}]},
            {"sources": [{"model": "A", "layer_range": [5, 6]}, {"model": "B", "layer_range": [0, 1]}]},
        ],
        {"A": llama(6), "B": llama(6)},
        method="linear",
        parameters={"weight": [0.0, 1.0]},
    )
    assert [layer.t for layer in plan.layers] == [0.0, 0.5, 1.0, 1.0]
    assert [layer.slice for layer in plan.layers] == [0, 0, 0, 1]
    assert by_name(plan)["model.layers.1.mlp.up_proj.weight"].parameter("weight", source=1) == 0.5
    assert [(s.model, s.layer) for s in plan.layers[3].sources] == [("A", 5), ("B", 0)]


def test_parameters_are_looked_up_on_the_source_then_the_slice_then_the_config() -> None:
    plan = plan_slices(
        [
            {
                "sources": [
                    {"model": "A", "layer_range": [0, 2], "parameters": {"weight": 0.9}},
                    # a rule list without a fallback: tensors it does not match ask the next level
                    {"model": "B", "layer_range": [2, 4], "parameters": {"weight": [{"filter": "layers.3.", "value": 0.1}]}},
                ],
                "parameters": {"density": 0.4},
            }
        ],
        {"A": llama(4), "B": llama(4)},
        method="ties",
        base_model="C",
        parameters={"weight": 0.3, "density": 0.8, "normalize": False},
    )
    t0, t1 = (by_name(plan)[f"model.layers.{i}.mlp.up_proj.weight"] for i in (0, 1))
    assert t0.parameter("weight", source=0) == 0.9
    assert t0.parameter("weight", source=1) == 0.3  # B's source tensor is layers.2: no rule matches → global
    assert t1.parameter("weight", source=1) == 0.1  # B's source tensor is layers.3 (the filter sees the source name)
    assert t1.parameter("density", source=0) == 0.4  # the slice's value beats the global one
    assert t1.parameter("normalize") is False
    assert t1.parameter("lambda", default=1.0) == 1.0


@pytest.mark.parametrize(
    "slices, message",
    [
        ([], "no slices"),
        ([{"sources": []}], "slice 0 has no sources"),
        ([{"sources": [{"model": "Z", "layer_range": [0, 1]}]}], "unknown model 'Z'"),
        ([{"sources": [{"model": "A", "layer_range": [0, 7]}]}], r"0 ≤ start < end ≤ 6"),
        ([{"sources": [{"model": "A", "layer_range": [3, 3]}]}], r"0 ≤ start < end"),
        ([{"sources": [{"model": "A", "layer_range": [0]}]}], r"layer_range must be \[start, end\]"),
        (
            [{"sources": [{"model": "A", "layer_range": [0, 2]}, {"model": "B", "layer_range": [0, 3]}]}],
            r"same number of blocks \(not \[2, 3\]\)",
        ),
    ],
)
def test_slices_mergekit_rejects_are_refused_clearly(slices, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match=message):
        plan_slices(slices, {"A": llama(6), "B": llama(6)}, method="linear")


def test_passthrough_of_several_sources_is_refused() -> None:
    with pytest.raises(CheckpointError, match="passthrough copies one source per slice; slice 0 has 2"):
        plan_slices(
            [{"sources": [{"model": "A", "layer_range": [0, 2]}, {"model": "B", "layer_range": [0, 2]}]}],
            {"A": llama(2), "B": llama(2)},
        )


def test_sources_whose_blocks_do_not_fit_are_refused() -> None:
    other = [n for n in llama(2) if "mlp" not in n]
    with pytest.raises(CheckpointError, match="'B' block 0 has no tensor like 'model.layers.0.mlp.up_proj.weight'"):
        plan_slices(
            [{"sources": [{"model": "A", "layer_range": [0, 2]}, {"model": "B", "layer_range": [0, 2]}]}],
            {"A": llama(2), "B": other},
            method="linear",
        )
    with pytest.raises(CheckpointError, match="several stacks of blocks"):
        plan_slices(
            [{"sources": [{"model": "T5", "layer_range": [0, 1]}]}],
            {"T5": ["encoder.block.0.w", "decoder.block.0.w"]},
        )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 7), st.integers(1, 8)), min_size=1, max_size=5))
def test_any_stack_numbers_its_blocks_contiguously_from_existing_tensors(spans) -> None:  # type: ignore[no-untyped-def]
    names = {"A": llama(8), "B": llama(8)}
    slices = [{"sources": [{"model": m, "layer_range": [s, min(8, s + n)]}]} for m, s, n in spans if s < min(8, s + n)]
    plan = plan_slices(slices, names)
    lengths = sum(sl["sources"][0]["layer_range"][1] - sl["sources"][0]["layer_range"][0] for sl in slices)
    assert plan.num_hidden_layers == lengths == len(plan.layers)
    out = [t.name for t in plan.tensors]
    assert len(out) == len(set(out)) == 3 + lengths * len(PARTS)
    assert sorted({layer_index(n) for n in out if layer_index(n) is not None}) == list(range(lengths))
    for t in plan.tensors:
        assert all(s.tensor in names[s.model] for s in t.sources)
        if t.layer is not None:
            layer = plan.layers[t.layer]
            assert layer_index(t.sources[0].tensor) == layer.sources[0].layer


def test_planning_imports_no_torch() -> None:
    code = "import sys, mlspec.checkpoints.slices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
