"""Networks that think for longer at test time: DT-Net, an implicit (fixed-point) net, a feedforward
baseline. Each is size-agnostic (3x3 padded convolutions only), 2-D for mazes or 1-D for prefix sums.

All three share one interface (:class:`IterativeNet`) so that training, evaluation and dynamics are
written once:

- ``initial_state(x)`` → ``h0``; ``step(x, h, k)`` → ``h`` after one *plain* application of the
  update (the k-th); ``readout(h)`` → per-pixel logits ``(N, 2, ...)``.
- ``forward(x, iterations, at=[...])`` returns the logits at every budget in ``at`` from ONE pass.
- ``trajectory(x, iterations)`` yields the free-running states ``h1, h2, ...`` (plain steps, no
  stopping rule) — what the dynamics analysis needs.

For DT-Net and the feedforward net, budget k *is* k plain steps. For the implicit net the budget is
a solver budget (Picard with per-sample freezing at ``tol``, or Anderson acceleration), so "solver
output at budget k" and "k plain steps" are different things, exposed by different methods.

Layer names follow DeepThinking's ``dt_net_recall_2d`` (``projection``, ``recur_block``, ``head``;
width 128 and two blocks give its 783,504 parameters), so its checkpoints load into ``dt_net``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from ..ops.models.builders import architecture

__all__ = ["BasicBlock", "IterativeNet", "DTNet", "ImplicitNet", "FeedForwardNet", "SOLVERS", "broyden"]

SOLVERS = ("picard", "anderson", "broyden")


def _conv(dims: int, c_in: int, c_out: int) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    return cls(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=False)


def _head(dims: int, width: int) -> nn.Sequential:
    """Per-pixel logits for {not on path, on path}: w→32→8→2 in 2-D, w→w→w/2→2 in 1-D (as DeepThinking)."""
    a, b = (32, 8) if dims == 2 else (width, width // 2)
    return nn.Sequential(_conv(dims, width, a), nn.ReLU(), _conv(dims, a, b), nn.ReLU(), _conv(dims, b, 2))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(conv2(relu(conv1(h))) + h), width preserved."""

    def __init__(self, dims: int, width: int):
        super().__init__()
        self.conv1 = _conv(dims, width, width)
        self.conv2 = _conv(dims, width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)


class IterativeNet(nn.Module):
    """The shared interface; subclasses define the state, the update and the readout."""

    iterations: int  # the budget used in training and when ``forward`` gets none
    recurrent_prefixes: tuple[str, ...] = ()  # parameter-name prefixes of weight-tied layers

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(self, x: torch.Tensor, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The state after plain steps ``start+1 .. stop`` from ``h``."""
        for k in range(start, stop):
            h = self.step(x, h, k)
        return h

    def trajectory(self, x: torch.Tensor, iterations: int) -> Iterator[torch.Tensor]:
        """Free-running states h1 .. h_iterations (plain steps, nothing frozen)."""
        h = self.initial_state(x)
        for k in range(iterations):
            h = self.step(x, h, k)
            yield h

    def states_at(self, x: torch.Tensor, budgets: Sequence[int]) -> list[torch.Tensor]:
        """The state at every budget, from one pass up to the largest."""
        wanted, out = set(budgets), {}
        for k, h in enumerate(self.trajectory(x, max(budgets)), start=1):
            if k in wanted:
                out[k] = h
        return [out[b] for b in budgets]

    def forward(
        self, x: torch.Tensor, iterations: int | None = None, at: Sequence[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(N, 2, ...)`` after ``iterations``, or a list of them at every budget in ``at``."""
        budgets = list(at) if at is not None else [iterations or self.iterations]
        if min(budgets) < 1:
            raise ValueError(f"iteration budgets must be >= 1 (not {min(budgets)!r})")
        logits = [self.readout(h) for h in self.states_at(x, budgets)]
        return logits if at is not None else logits[0]


class DTNet(IterativeNet):
    """DeepThinking recurrent net with recall: h ← recur_block(cat(h, x)), logits = head(h)."""

    recurrent_prefixes = ("recur_block.",)

    def __init__(self, width: int = 128, blocks: int = 2, recall: bool = True, dims: int = 2,
                 in_channels: int = 3, iterations: int = 30):
        super().__init__()
        self.recall, self.iterations = recall, iterations
        self.projection = nn.Sequential(_conv(dims, in_channels, width), nn.ReLU())
        recur: list[nn.Module] = [_conv(dims, width + in_channels, width)] if recall else []
        if recall and dims == 1:
            recur.append(nn.ReLU())
        recur.append(nn.Sequential(*(BasicBlock(dims, width) for _ in range(blocks))))
        self.recur_block = nn.Sequential(*recur)
        self.head = _head(dims, width)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)  # (N, C, H, W) -> (N, w, H, W)

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.recur_block(torch.cat([h, x], 1) if self.recall else h)  # (N, w, H, W)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)  # (N, w, H, W) -> (N, 2, H, W)


class FeedForwardNet(IterativeNet):
    """Baseline without weight tying: projection, ``depth`` distinct BasicBlocks, head. Budget k reads
    out after block min(k, depth): it cannot use more test-time computation than it has layers."""

    def __init__(self, width: int = 128, depth: int = 30, dims: int = 2, in_channels: int = 3):
        super().__init__()
        self.iterations = depth
        self.projection = nn.Sequential(_conv(dims, in_channels, width), nn.ReLU())
        self.layers = nn.ModuleList(BasicBlock(dims, width) for _ in range(depth))
        self.head = _head(dims, width)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.layers[k](h) if k < len(self.layers) else h

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)


class ImplicitNet(IterativeNet):
    """IT-Net-style fixed-point net: h* = T(h*; x) with T(h; x) = blocks(conv(cat(h, x))), h0 = 0.

    ``forward`` reads the *solver* (``picard``: plain iteration where a sample stops updating once
    ‖Δh‖∞ < tol; ``anderson``: Anderson acceleration with the same stopping rule; ``broyden``:
    limited-memory Broyden root-finding on T(h) − h that returns each sample's lowest-residual
    iterate, as the DEQ/PI-Net solver does); ``step`` is one plain application of T. Training
    backpropagates either through one application of T at the no-grad fixed point (``jfb``,
    Jacobian-free) or through the whole solve (``unrolled``). With ``path_independent`` training
    starts half of each batch from a random state (Anil et al. 2022), so the net learns one fixed
    point whatever the start; evaluation always starts from zero.
    """

    recurrent_prefixes = ("update.",)

    def __init__(self, width: int = 128, blocks: int = 4, solver: str = "anderson", tol: float = 1e-3,
                 iterations: int = 30, backward: str = "jfb", dims: int = 2, in_channels: int = 3,
                 memory: int = 5, path_independent: bool = False):
        super().__init__()
        if solver not in SOLVERS or backward not in ("jfb", "unrolled"):
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)} and backward jfb or unrolled "
                             f"(not {solver!r}, {backward!r})")
        self.width, self.solver, self.tol, self.iterations = width, solver, tol, iterations
        self.backward_mode, self.memory, self.path_independent = backward, memory, path_independent
        self.update = nn.Sequential(
            _conv(dims, width + in_channels, width), *(BasicBlock(dims, width) for _ in range(blocks))
        )
        self.head = _head(dims, width)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.width, *x.shape[2:])  # (N, w, H, W)

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.update(torch.cat([h, x], 1))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def states_at(self, x: torch.Tensor, budgets: Sequence[int]) -> list[torch.Tensor]:
        """Solver iterates at every budget from one solve; in training, the backward mode applies."""
        h0 = self.initial_state(x)
        if self.training and self.path_independent:
            half = x.shape[0] // 2  # the other half starts from zero, as at test time
            h0 = torch.cat([torch.randn_like(h0[:half]), h0[half:]])
        if self.training and self.backward_mode == "jfb":
            with torch.no_grad():
                fixed = self._solve(x, h0, budgets)
            return [self.step(x, h.detach()) for h in fixed]  # gradient through one application of T
        return self._solve(x, h0, budgets)

    def _solve(self, x: torch.Tensor, h: torch.Tensor, budgets: Sequence[int]) -> list[torch.Tensor]:
        if self.solver == "broyden":
            return broyden(lambda z: self.step(x, z), h, budgets, tol=self.tol)
        wanted, out = set(budgets), {}
        done = torch.zeros(h.shape[0], dtype=torch.bool, device=x.device)
        hist_h: list[torch.Tensor] = []  # Anderson memory of iterates (N, D) ...
        hist_f: list[torch.Tensor] = []  # ... and of their images T(h) (N, D)
        for k in range(1, max(budgets) + 1):
            f = self.step(x, h)
            if self.solver == "anderson":
                hist_h, hist_f = (hist_h + [h.flatten(1)])[-self.memory:], (hist_f + [f.flatten(1)])[-self.memory:]
                new = _anderson_mix(torch.stack(hist_h, 1), torch.stack(hist_f, 1)).view_as(h)
            else:
                new = f
            keep = done.view(-1, *([1] * (h.dim() - 1)))
            new = torch.where(keep, h, new)
            done = done | ((f - h).flatten(1).abs().amax(1) < self.tol)
            h = new
            if k in wanted:
                out[k] = h
        return [out[b] for b in budgets]


def broyden(
    fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, budgets: Sequence[int], *,
    tol: float, memory: int = 30,
) -> list[torch.Tensor]:
    """Solve h = fn(h) per sample by Broyden's ("good") method on g(h) = fn(h) − h, as the DEQ solver.

    The inverse Jacobian of g starts at −I (so the first step is a plain application of ``fn``) and
    gets one rank-one update per step, keeping the last ``memory`` of them. A sample stops once
    ‖g‖∞ < tol. Each budget k (k evaluations of ``fn``) reads every sample's lowest-residual iterate
    so far, which is what the DEQ/PI-Net solver returns.
    """
    shape, n = h.shape, h.shape[0]
    x = h.flatten(1)  # (N, D)
    g = fn(x.view(shape)).flatten(1) - x
    us: list[torch.Tensor] = []  # rank-one updates: B = −I + Σ u_i v_iᵀ, u and v (N, D)
    vs: list[torch.Tensor] = []

    def apply(y: torch.Tensor) -> torch.Tensor:  # B y
        out = -y
        for u, v in zip(us, vs):
            out = out + u * (v * y).sum(1, keepdim=True)
        return out

    def apply_t(y: torch.Tensor) -> torch.Tensor:  # Bᵀ y
        out = -y
        for u, v in zip(us, vs):
            out = out + v * (u * y).sum(1, keepdim=True)
        return out

    best, best_res = x.clone(), torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    wanted, out = set(budgets), {}
    for k in range(1, max(budgets) + 1):
        new_x = torch.where(done[:, None], x, x - apply(g))  # the first step (B = −I) is x + g = fn(x)
        new_g = fn(new_x.view(shape)).flatten(1) - new_x
        res = new_g.norm(dim=1)
        better = res < best_res
        best = torch.where(better[:, None], new_x, best)
        best_res = torch.where(better, res, best_res)
        dx, dg = new_x - x, new_g - g
        bdg = apply(dg)
        vt = apply_t(dx)  # v = Bᵀ Δx
        denom = (vt * dg).sum(1, keepdim=True)
        ok = (denom.abs() > 1e-30) & ~done[:, None]
        us.append(torch.where(ok, (dx - bdg) / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(dx)))
        vs.append(vt)
        us, vs = us[-memory:], vs[-memory:]
        done = done | (new_g.abs().amax(1) < tol)
        x, g = new_x, new_g
        if k in wanted:
            out[k] = best.view(shape).clone()
    return [out[b] for b in budgets]


def _anderson_mix(hs: torch.Tensor, fs: torch.Tensor, lam: float = 1e-4) -> torch.Tensor:
    """Anderson step: Σ α_i f_i with α = argmin ‖Σ α_i (f_i − h_i)‖², Σ α_i = 1, regularised by λ
    relative to the residuals' scale (they can be large: D is every pixel of every channel)."""
    g = (fs - hs).to(torch.float64 if fs.dtype == torch.float64 else torch.float32)  # (N, m, D) residuals
    m = g.shape[1]
    gram = g @ g.transpose(1, 2)  # (N, m, m)
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None, None]
    gram = gram + lam * scale * torch.eye(m, device=g.device, dtype=g.dtype)
    ones = torch.ones(g.shape[0], m, 1, device=g.device, dtype=g.dtype)
    alpha = torch.linalg.solve(gram, ones)  # (N, m, 1), then normalise to sum to one
    alpha = alpha / alpha.sum(1, keepdim=True)
    return (alpha.transpose(1, 2).to(fs.dtype) @ fs).squeeze(1)  # (N, D)


@architecture("dt_net")
def _dt_net(width: int = 128, blocks: int = 2, recall: bool = True, dims: int = 2,
            in_channels: int = 3, iterations: int = 30) -> nn.Module:
    return DTNet(width, blocks, recall, dims, in_channels, iterations)


@architecture("implicit_net")
def _implicit_net(width: int = 128, blocks: int = 4, solver: str = "anderson", tol: float = 1e-3,
                  iterations: int = 30, backward: str = "jfb", dims: int = 2, in_channels: int = 3,
                  path_independent: bool = False) -> nn.Module:
    return ImplicitNet(width, blocks, solver, tol, iterations, backward, dims, in_channels,
                       path_independent=path_independent)


@architecture("feedforward")
def _feedforward(width: int = 128, depth: int = 30, dims: int = 2, in_channels: int = 3) -> nn.Module:
    return FeedForwardNet(width, depth, dims, in_channels)
