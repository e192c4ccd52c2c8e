"""Declarations of model constructors and classifier training (torch-free)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ...registry import Kind, OpSpec, Params, Port, register

#: Layer widths and weight counts past these make no model a study can train; refused at check time.
MAX_WIDTH = 1_000_000
MAX_WEIGHTS = 1_000_000_000


class MLPParams(Params):
    in_features: int = Field(alias="in", ge=1, le=MAX_WIDTH, description="input features (64 for digits)")
    hidden: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(default=[256, 256],
                                                                    description="widths of the hidden layers")
    out_features: int = Field(alias="out", ge=1, le=MAX_WIDTH, description="number of classes")
    norm: Literal["none", "layernorm", "batchnorm"] = Field(default="none", description="after each hidden layer")

    @model_validator(mode="after")
    def _buildable(self) -> MLPParams:
        widths = [self.in_features, *self.hidden, self.out_features]
        weights = sum(a * b + b for a, b in zip(widths, widths[1:]))
        if weights > MAX_WEIGHTS:
            raise ValueError(f"this network would have {weights:,} weights (at most {MAX_WEIGHTS:,})")
        return self


class TrainParams(Params):
    epochs: int = Field(default=20, ge=1, le=100_000, description="passes over the training split")
    lr: float = Field(default=1e-3, gt=0.0, description="learning rate")
    batch: int = Field(default=64, ge=1, description="mini-batch size")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="Adam or SGD with momentum")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(default=0.0, ge=0.0, description="L2 penalty (AdamW-style for adam)")


register(
    OpSpec(
        name="mlp",
        doc="""A fully connected ReLU network, initialised from the step's seed.

        `model init = mlp(in = 64, hidden = [256, 256], out = 10)`""",
        inputs=(),
        output=Kind.MODEL,
        params=MLPParams,
        impl="mlspec.ops.models.train:mlp",
        uses_seed=True,
    )
)

register(
    OpSpec(
        name="train",
        doc="""Train a classifier with cross-entropy on a dataset's training split.

        Mini-batches are shuffled from the step's seed, so two `train` steps with the same
        inputs but different names see different data orders.
        `model a = train(init, on = low, epochs = 40, lr = 1e-3)`""",
        inputs=(Port("model", Kind.MODEL), Port("on", Kind.DATASET)),
        output=Kind.MODEL,
        params=TrainParams,
        impl="mlspec.ops.models.train:train",
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)


class ExportParams(Params):
    path: str = Field(description="where to write, relative to the study's output directory")
    format: Literal["safetensors", "hf"] = Field(default="safetensors", description="a file or an HF directory")


register(
    OpSpec(
        name="export",
        doc="""Write a model's weights: a .safetensors file, or a Hugging Face directory (`as hf`).

        `export ties to "ties.safetensors"` — paths are relative to the output directory and may
        not leave it unless the run passes --allow-outside-out.""",
        inputs=(Port("model", Kind.MODEL),),
        output=Kind.FILE,
        params=ExportParams,
        impl="mlspec.ops.models.export:export",
        cacheable=False,
    )
)
