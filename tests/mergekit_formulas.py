"""TEST ORACLES ONLY — mergekit's merge formulas as written in its code (arcee-ai/mergekit, the
0.1.5 line: ``mergekit/sparsify.py`` and ``mergekit/merge_methods/*.py``), transcribed so that
the tests can check mlspec's own kernels against them. Nothing here is part of mlspec.

Each function names the mergekit function it transcribes. Deviations, all marked ``# oracle:``:
a random draw is taken as ``torch.rand(shape, generator=g) < p`` (a Bernoulli(p) draw, where
mergekit calls ``torch.bernoulli(p)`` on the global RNG), and mergekit's task/config plumbing is
replaced by plain arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# --- mergekit/sparsify.py -------------------------------------------------------------------------
def rescaled_masked_tensor(tensor, mask, l1: bool, eps: float = 1e-7):  # type: ignore[no-untyped-def]
    masked = tensor * mask
    if not l1:
        return masked
    before_scale = tensor.abs().sum()
    after_scale = masked.abs().sum()
    if before_scale < eps or after_scale < eps:
        return masked
    return masked * (before_scale / after_scale)


def magnitude(tensor, density, l1):  # type: ignore[no-untyped-def]
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    mask = torch.zeros_like(tensor)
    w = tensor.abs().view(-1)
    topk = torch.argsort(w, descending=True)[:k]
    mask.view(-1)[topk] = 1
    return rescaled_masked_tensor(tensor, mask, l1)


def magnitude_outliers(tensor, density, gamma, l1):  # type: ignore[no-untyped-def]
    if density >= 1:
        return tensor
    num_elems = tensor.numel()
    target_n = int(density * num_elems)
    n_top = int(gamma * num_elems)
    n_bot = num_elems - target_n - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    w = tensor.abs().view(-1)
    indices = torch.sort(w, descending=False).indices
    mask = torch.zeros_like(tensor)
    mask.view(-1)[indices[n_bot:-n_top]] = 1
    return rescaled_masked_tensor(tensor, mask, l1)


def della_probs(tensor, density, epsilon):  # type: ignore[no-untyped-def]
    """The keep probabilities inside ``della_magprune``."""
    if len(tensor.shape) < 2:
        tensor = tensor.unsqueeze(0)
    magnitudes = tensor.abs()
    sorted_indices = torch.argsort(magnitudes, dim=1, descending=False)
    ranks = sorted_indices.argsort(dim=1).to(tensor.dtype) + 1
    min_ranks = ranks.min(dim=1, keepdim=True).values
    max_ranks = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - min_ranks) / (max_ranks - min_ranks)).clamp(0, 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


def della_magprune(tensor, density, epsilon, l1, g):  # type: ignore[no-untyped-def]
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    orig_shape = tensor.shape
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("Epsilon must be chosen such that density +/- epsilon is in (0, 1)")
    probs = della_probs(tensor, density, epsilon)
    if len(tensor.shape) < 2:
        tensor = tensor.unsqueeze(0)
    mask = (torch.rand(tensor.shape, generator=g) < probs).to(tensor.dtype)  # oracle: Bernoulli(probs)
    res = rescaled_masked_tensor(tensor, mask, l1)
    return res.reshape(orig_shape)


# --- mergekit/merge_methods/generalized_task_arithmetic.py ------------------------------------------
def get_mask(delta, method="sum"):  # type: ignore[no-untyped-def]
    sign = delta.sign().to(delta.dtype)
    if method == "sum":
        sign_weight = delta.sum(dim=0)
        majority_sign = (sign_weight >= 0).to(delta.dtype) * 2 - 1
    else:
        majority_sign = (sign.sum(dim=0) >= 0).to(delta.dtype) * 2 - 1
    return sign == majority_sign


def gta(base, tensors, *, weights, sparsify, consensus, normalize, lambda_):  # type: ignore[no-untyped-def]
    """``GTATask.execute``: ``sparsify(delta, i)`` sparsifies model i's task vector."""
    tvs = [sparsify(x - base, i) for i, x in enumerate(tensors)]
    deltas = torch.stack(tvs, dim=0)
    w = torch.tensor(weights, dtype=deltas.dtype)
    while len(deltas.shape) > len(w.shape):
        w.unsqueeze_(-1)
    weighted_deltas = deltas * w
    if consensus:
        mask = get_mask(weighted_deltas, method=consensus)
        mixed_delta = (weighted_deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed_delta = weighted_deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed_delta /= divisor
    if lambda_ != 1:
        mixed_delta *= lambda_
    return base + mixed_delta


# --- mergekit/merge_methods/sce.py ----------------------------------------------------------------
def sce_merge(tensors, base_tensor, select_topk=1.0):  # type: ignore[no-untyped-def]
    task_vectors = torch.stack([t - base_tensor for t in tensors], dim=0)
    if select_topk < 1:
        var = torch.var(task_vectors, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * select_topk)
        _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
        mask = torch.zeros_like(var)
        mask.view(-1)[indices] = 1
        task_vectors = task_vectors * mask.unsqueeze(0)
    erase_mask = get_mask(task_vectors, method="sum")
    tv_weights = torch.mean(task_vectors**2, dim=list(range(1, task_vectors.dim())))
    weight_sum = torch.sum(tv_weights).item()
    if abs(weight_sum) < 1e-6:
        tv_weights = torch.ones_like(tv_weights) / tv_weights.shape[0]
    else:
        tv_weights = tv_weights / weight_sum
    while tv_weights.dim() < task_vectors.dim():
        tv_weights = tv_weights.unsqueeze(-1)
    erased_weights = tv_weights * erase_mask
    merged_tv = (task_vectors * erased_weights).sum(dim=0)
    return base_tensor + merged_tv / torch.sum(erased_weights, dim=0).clamp(min=1e-6)


# --- mergekit/merge_methods/nuslerp.py ------------------------------------------------------------
def nuslerp(t, v0, v1, dim=-1, eps=1e-8, flatten=False):  # type: ignore[no-untyped-def]
    out_shape = v0.shape

    def _normalize(x, eps=1e-7):  # type: ignore[no-untyped-def]
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=eps)

    if flatten:
        v0 = v0.view(-1)
        v1 = v1.view(-1)
    elif dim != -1:
        v0 = v0.transpose(dim, -1)
        v1 = v1.transpose(dim, -1)
    v0_u = _normalize(v0)
    v1_u = _normalize(v1)
    cos_theta = torch.sum(v0_u * v1_u, dim=-1, keepdim=True)
    theta = torch.acos(cos_theta.clamp(-1, 1))
    sin_theta = torch.sin(theta)
    colinear = (sin_theta.abs() < eps).squeeze()
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    res[colinear] = (1 - t) * v0[colinear] + t * v1[colinear]
    if dim != -1 and not flatten:
        res = res.transpose(dim, -1)
    return res.reshape(out_shape)


def nuslerp_task(tensors, weights, base=None, row_wise=False, flatten=True):  # type: ignore[no-untyped-def]
    """``NuSlerpTask.execute`` after the base has been popped."""
    t = 0.5 if abs(sum(weights)) < 1e-6 else weights[1] / sum(weights)
    dim = 0 if row_wise else -1
    if base is not None:
        return base + nuslerp(t, tensors[0] - base, tensors[1] - base, dim=dim, flatten=flatten)
    return nuslerp(t, tensors[0], tensors[1], dim=dim, flatten=flatten)


# --- mergekit/merge_methods/multislerp.py ---------------------------------------------------------
def multislerp(tensors, weight, base_tensor=None, normalize_weights=True, eps=1e-8):  # type: ignore[no-untyped-def]
    if len(tensors) == 1:
        return tensors[0]
    tensors = torch.stack(tensors, dim=0)
    if base_tensor is not None:
        tensors -= base_tensor
    tensors_flat = tensors.view(tensors.shape[0], -1)
    weights = torch.tensor(weight, dtype=tensors.dtype)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = torch.norm(tensors_flat, dim=-1, keepdim=True)
    unit_tensors = tensors_flat / (norms + eps)
    mean = (unit_tensors * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if tensors.shape[0] == 2:
            res = (tensors[0] * weights[0] + tensors[1] * weights[1]).view(tensors.shape[1:])
            if base_tensor is not None:
                res = res + base_tensor
            return res
        raise ValueError("The weighted sum of the input tensors is zero.")
    mean = mean / mean_norm
    dots = (unit_tensors * mean).sum(-1, keepdim=True)
    tangent_vectors = unit_tensors - dots * mean
    tangent_result = (tangent_vectors * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent_result) + eps
    result = mean * torch.cos(tangent_norm) + tangent_result * (torch.sin(tangent_norm) / tangent_norm)
    avg_norm = (norms.squeeze(-1) * weights).sum()
    result = result * avg_norm
    result = result.view(tensors.shape[1:])
    if base_tensor is not None:
        result = result + base_tensor
    return result


# --- mergekit/merge_methods/nearswap.py -----------------------------------------------------------
def nearswap_merge(tensors, base_tensor, t):  # type: ignore[no-untyped-def]
    a = base_tensor
    b = tensors[0]
    absdiff = torch.abs(a - b)
    weight = (t / absdiff.clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a


# --- mergekit/merge_methods/arcee_fusion.py -------------------------------------------------------
def arcee_fusion(base, x):  # type: ignore[no-untyped-def]
    """``ArceeFusionMergeTask.execute`` for a tensor of at most 10⁶ entries (no sampling)."""

    def approximate_quantiles(tensor, q):  # type: ignore[no-untyped-def]
        sorted_tensor, _ = torch.sort(tensor.view(-1))
        return sorted_tensor[(q * (sorted_tensor.numel() - 1)).long()]

    eps = 1e-8
    diff = (x - base).abs()
    p = F.softmax(x, dim=-1) + eps
    q = F.softmax(base, dim=-1) + eps
    kl_div = torch.sum(p * torch.log(p / q), dim=-1)
    importance_scores = diff * kl_div.unsqueeze(-1)
    median = approximate_quantiles(importance_scores, torch.tensor([0.5]))[0]
    q1, q3 = approximate_quantiles(importance_scores, torch.tensor([0.25, 0.75]))
    threshold = median + 1.5 * (q3 - q1)
    fusion_mask = (importance_scores >= threshold).to(x.dtype)
    return base + (x - base) * fusion_mask


# --- mergekit/merge_methods/ram.py ----------------------------------------------------------------
def _prepare_ram_vectors(tensors, base_tensor, epsilon):  # type: ignore[no-untyped-def]
    task_vectors = torch.stack([t - base_tensor for t in tensors], dim=0)
    tv_flat = task_vectors.view(len(tensors), -1)
    nonzero_mask = tv_flat.abs() > epsilon
    contrib_counts = nonzero_mask.sum(dim=0, keepdim=True)
    return tv_flat, nonzero_mask, contrib_counts, contrib_counts > 1, contrib_counts == 1


def ram_merge(tensors, base_tensor, epsilon=1e-5):  # type: ignore[no-untyped-def]
    tv_flat, nonzero_mask, contrib_counts, overlap_mask, unique_mask = _prepare_ram_vectors(
        tensors, base_tensor, epsilon
    )
    tv_flat_z = tv_flat * nonzero_mask
    merged_tv_flat = (
        (tv_flat_z * unique_mask) + (tv_flat_z * overlap_mask / contrib_counts.clamp(min=1))
    ).sum(dim=0, keepdim=True)
    return base_tensor + merged_tv_flat.reshape_as(base_tensor)


def ramplus_tl_merge(tensors, base_tensor, r=0.1, alpha=0.2, epsilon=1e-5):  # type: ignore[no-untyped-def]
    tv_flat, nonzero_mask, contrib_counts, overlap_mask, unique_mask = _prepare_ram_vectors(
        tensors, base_tensor, epsilon
    )
    shared_counts = (nonzero_mask & overlap_mask).sum(dim=1)
    unique_counts = (nonzero_mask & unique_mask).sum(dim=1)
    rho = shared_counts / unique_counts.clamp(min=epsilon)
    lambda_ = 1 + r * rho.clamp(min=0, max=alpha)
    tv_flat_z = tv_flat * nonzero_mask
    merged_tv_flat = (
        (tv_flat_z * unique_mask * lambda_.unsqueeze(-1))
        + (tv_flat_z * overlap_mask / contrib_counts.clamp(min=1))
    ).sum(dim=0, keepdim=True)
    return base_tensor + merged_tv_flat.reshape_as(base_tensor)
