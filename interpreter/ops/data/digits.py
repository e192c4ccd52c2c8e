"""scikit-learn's digits, split deterministically, and class subsets of any labelled dataset."""

from __future__ import annotations

import torch

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset
from .specs import ClassesParams, DigitsParams

__all__ = ["digits", "classes"]


def digits(ctx: StepContext, params: DigitsParams) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=params.test_fraction, random_state=params.split_seed, stratify=bunch.target
    )
    tensors = {}
    if params.validation_fraction:
        idx_train, idx_val = train_test_split(
            idx_train, test_size=params.validation_fraction, random_state=params.split_seed,
            stratify=bunch.target[idx_train],
        )
        va = torch.tensor(sorted(idx_val))
        tensors.update(x_val=x[va], y_val=y[va])
    tr, te = torch.tensor(sorted(idx_train)), torch.tensor(sorted(idx_test))
    tensors.update(x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    return Dataset(
        tensors=tensors,
        meta={"source": "sklearn.datasets.load_digits", "num_classes": 10, "in_features": 64},
    )


def classes(ctx: StepContext, params: ClassesParams, *, data: Dataset) -> Dataset:
    if "y_train" not in data.tensors:
        raise StepError("classes() needs a labelled dataset with x_train/y_train/x_test/y_test")
    keep = torch.tensor(sorted(set(params.classes)))
    present = set(torch.unique(data["y_train"]).tolist())
    missing = [c for c in params.classes if c not in present]
    if missing:
        raise StepError(f"class {missing[0]!r} does not occur in the dataset (labels: {sorted(present)})")
    tensors = {}
    for split in ("train", "val", "test"):
        if f"x_{split}" not in data.tensors:
            continue
        x, y = data.split(split)
        mask = torch.isin(y, keep)
        y_kept = y[mask]
        if params.relabel:
            y_kept = torch.searchsorted(keep, y_kept)
        tensors[f"x_{split}"], tensors[f"y_{split}"] = x[mask], y_kept
    meta = dict(data.meta, classes=keep.tolist())
    if params.relabel:
        meta["num_classes"] = len(keep)
    return Dataset(tensors=tensors, meta=meta)
