"""Declarations of the ``.extrap`` operators (torch-free: ``mlspec check`` imports this, not torch).

Tasks: ``maze``, ``prefix_sums``. Models: ``dt_net``, ``implicit_net``, ``feedforward``. Statements
(lowered by the checker, see ``check/dialects.py``): ``train`` → ``train_recurrent``, ``evaluate`` →
``evaluate_extrap`` (one step per axis grid point), ``dynamics`` → ``dynamics``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..registry import Kind, OpSpec, Params, Port, register

EXTRAP = frozenset({"extrap"})
Generator = Literal["dfs", "wilson", "kruskal", "percolation", "dfs_percolation"]
Detector = Literal["fixed_point", "cycle", "pca", "betti", "deadend"]


class MazeParams(Params):
    generator: Generator = Field(default="dfs", description="dfs, wilson, kruskal, percolation or dfs_percolation")
    size: int = Field(default=9, ge=3, le=2001, description="odd maze size n (images are 2n+6 pixels wide)")
    count: int = Field(default=1000, ge=1, description="how many mazes")
    percolation: float = Field(default=0.0, ge=0.0, le=1.0, description="probability of opening each inner wall")
    deadend_start: bool = Field(default=True, description="the start cell has exactly one open neighbour")
    seed: int | None = Field(default=None, ge=0, description="fixed seed; default: the step's derived seed")

    @field_validator("size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"maze size must be odd, e.g. 9 or 59 (not {v})")
        return v


class PrefixSumParams(Params):
    length: int = Field(default=32, ge=1, description="bits per string: the difficulty axis")
    count: int = Field(default=10000, ge=1, description="how many strings")
    seed: int | None = Field(default=None, ge=0, description="fixed seed; default: the step's derived seed")


class _NetParams(Params):
    width: int = Field(default=128, ge=1, le=4096, description="channels of the hidden state")
    dims: Literal[1, 2] = Field(default=2, description="2 for mazes, 1 for prefix sums")


class DTNetParams(_NetParams):
    blocks: int = Field(default=2, ge=1, le=256, description="BasicBlocks in the recurrent block")
    recall: bool = Field(default=True, description="feed the input to every iteration")
    iterations: int = Field(default=30, ge=1, description="iterations used in training")


class ImplicitNetParams(_NetParams):
    blocks: int = Field(default=4, ge=1, le=256, description="BasicBlocks in the update")
    solver: Literal["picard", "anderson", "broyden"] = Field(default="anderson", description="fixed-point solver")
    tol: float = Field(default=1e-3, gt=0.0, description="a sample stops once its max |Δh| is below tol")
    budget: int = Field(default=30, ge=1, description="solver iterations used in training")
    backward: Literal["jfb", "unrolled"] = Field(default="jfb", description="Jacobian-free or through the solve")
    path_independent: bool = Field(
        default=False, description="train half of each batch from a random initial state (Anil et al. 2022)")


class FeedForwardParams(_NetParams):
    depth: int = Field(default=30, ge=1, le=10_000, description="distinct (not weight-tied) BasicBlocks")


class TrainRecurrentParams(Params):
    epochs: int = Field(default=50, ge=1, description="passes over the training split")
    lr: float = Field(default=1e-3, gt=0.0, description="Adam learning rate")
    batch_size: int = Field(default=50, ge=1, alias="batch", description="mini-batch size")
    loss: dict[str, Any] | None = Field(default=None, description="progressive_loss(alpha = 0.01); default alpha 0")
    iterations: int | None = Field(default=None, ge=1, description="training budget; default: the model's")
    warmup: int = Field(default=10, ge=0, description="epochs of linear learning-rate warm-up")
    throttle: bool = Field(default=True, description="weight-tied layers learn at lr / iterations")
    weight_decay: float = Field(default=2e-4, ge=0.0, description="Adam L2 penalty")
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0, alias="validation",
                                description="held out to pick the best epoch")
    clip: float | None = Field(default=None, gt=0.0, description="gradient-norm clipping")
    milestones: list[int] = Field(default=[], description="epochs where the learning rate decays")
    gamma: float = Field(default=0.1, gt=0.0, description="decay factor at each milestone")

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if v.get("type") != "progressive_loss" or set(v) - {"type", "alpha"}:
            raise ValueError(f"loss must be progressive_loss(alpha = ...) (not {v!r})")
        alpha = v.get("alpha", 0.01)
        if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"progressive_loss alpha must lie in [0, 1] (not {alpha!r})")
        return {"type": "progressive_loss", "alpha": float(alpha)}


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, (int, str)) else v


class EvaluateExtrapParams(Params):
    iterations: list[int] = Field(default=[30], description="budgets, all read from one unrolled pass")
    correctness: Literal["exact", "valid_path"] = Field(default="exact", description="exact, or any minimal path")
    batch_size: int = Field(default=256, ge=1, alias="batch", description="samples per forward pass")
    examples: int = Field(default=4, ge=0, le=64, description="solved and failed mazes kept as pictures")

    _list = field_validator("iterations", mode="before")(_as_list)

    @field_validator("iterations")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError(f"iteration budgets must be positive (not {v!r})")
        return v


class DynamicsParams(Params):
    iterations: int = Field(default=3000, ge=1, description="free-running steps")
    detect: list[Detector] = Field(default=["fixed_point", "cycle"], description="analyses to run")
    window: int = Field(default=400, ge=2, description="last iterations analysed for limits, PCA, Betti")
    max_period: int = Field(default=8, ge=2, description="longest cycle looked for")
    tol: float = Field(default=1e-3, gt=0.0, description="relative distance that counts as equal")
    sketch: int = Field(default=256, ge=2, description="dimensions of the state sketch for PCA and Betti")
    batch_size: int = Field(default=64, ge=1, alias="batch", description="samples per forward pass")

    _list = field_validator("detect", mode="before")(_as_list)


def _op(name: str, doc: str, params: type[Params], output: Kind, inputs: tuple[Port, ...] = (),
        uses_seed: bool = True) -> None:
    register(OpSpec(name=name, doc=doc, inputs=inputs, output=output, params=params,
                    impl=f"mlspec.extrap.operators:{name}", uses_seed=uses_seed, dialects=EXTRAP))


_MODEL_ON = (Port("model", Kind.MODEL), Port("on", Kind.DATASET))

_op("maze", """Generated mazes with shortest-path targets, in the DeepThinking pixel format.

    `task mazes = maze(generator = dfs, size = 9, percolation = 0.0, deadend_start = true)`, then
    `mazes(count = 50000)` or `mazes(size = 33, count = 64)` for variants. Fails clearly when a
    setting cannot yield `count` valid mazes (dead-end starts in very open mazes).""",
    MazeParams, Kind.DATASET)
_op("prefix_sums", """Random bit strings and their running parity; `length` is the difficulty axis.

    `task bits = prefix_sums(length = 32, count = 10000)`""", PrefixSumParams, Kind.DATASET)
_op("dt_net", """DeepThinking recurrent net with recall (Bansal et al.), initialised from the step's seed.

    `model dt = dt_net(width = 128, recall = true, iterations = 30)`; `dims = 1` for prefix sums.""",
    DTNetParams, Kind.MODEL)
_op("implicit_net", """Fixed-point net (IT-Net style) solved by picard, anderson or broyden, trained with jfb or unrolled.

    `model it = implicit_net(width = 128, blocks = 4, solver = anderson, tol = 1e-3, backward = jfb)`;
    PI-Net's recipe (Anil et al. 2022) is `solver = broyden, path_independent = true`: Broyden's
    lowest-residual iterate, and training from random initial states for half of each batch.""",
    ImplicitNetParams, Kind.MODEL)
_op("feedforward", """Baseline of `depth` distinct blocks: no weight tying, no test-time scaling.

    `model ff = feedforward(width = 128, depth = 30)`""", FeedForwardParams, Kind.MODEL)
_op("train_recurrent", """Train an iterative net on a task (statement `train m on data epochs E with ...`).

    Progressive loss for weight-tied nets, loss masked to non-wall pixels, recurrent-layer LR
    throttle, warm-up, best epoch by validation accuracy; resumes from its checkpoint.""",
    TrainRecurrentParams, Kind.MODEL, _MODEL_ON)
_op("evaluate_extrap", """Solved fraction and per-pixel accuracy at each iteration budget (one pass).

    `evaluate [dt] on mazes(count = 1000) along size x percolation iterations [30, 100]`""",
    EvaluateExtrapParams, Kind.METRICS, _MODEL_ON, uses_seed=False)
_op("dynamics", """Free-running trajectories: residual norms, fixed points, cycles, PCA, Betti, dead-end oracle.

    `dynamics [dt] on mazes(size = 33, count = 64) iterations 3000 detect [fixed_point, cycle]`""",
    DynamicsParams, Kind.TRAJECTORIES, _MODEL_ON)
