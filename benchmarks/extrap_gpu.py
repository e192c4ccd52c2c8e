"""DT-Net throughput: mlspec's device path (large batches, bf16 autocast, channels-last) against the
seed paper's evaluation style (batch 1, fp32) and DeepThinking's training setting (batch 50, fp32),
measured in the same run on the same device.

Evaluation: maze-iterations per second and achieved TFLOP/s of the recurrent block (2 FLOPs per
multiply-add of its convolutions; the head and projection are left out) at sizes 9, 59 and 99.
Training: samples per second of progressive-loss training (30 iterations, alpha 0.01) on 9x9 mazes.

    python benchmarks/extrap_gpu.py            # full (a GPU)
    python benchmarks/extrap_gpu.py --quick    # tiny, runs anywhere (checks the script itself)
"""

from __future__ import annotations

import argparse
import time

import torch

from mlspec.extrap import mazes
from mlspec.extrap.batches import autocast, prepare_model
from mlspec.extrap.models import DTNet
from mlspec.extrap.training import progressive_loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def block_flops(width: int, side: int) -> float:
    """FLOPs of one recurrent-block application on one (side x side) maze image."""
    macs = 9 * ((width + 3) * width + 4 * width * width) * side * side
    return 2.0 * macs


def eval_rate(net: DTNet, size: int, batch: int, iterations: int, device: str, fast: bool, reps: int) -> float:
    """Maze-iterations per second of no-grad unrolling (readout at the last budget only)."""
    x = mazes.generate(size=size, count=batch, seed=0).inputs.to(device)
    if fast and device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), (autocast(device) if fast else torch.autocast("cpu", enabled=False)):
        net(x, iterations=2)  # warm-up (cuDNN algorithm choice)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            net(x, iterations=iterations)
        sync(device)
    return reps * batch * iterations / (time.perf_counter() - start)


def train_rate(net: DTNet, batch: int, iterations: int, device: str, fast: bool, steps: int) -> float:
    """Samples per second of progressive-loss training steps on 9x9 mazes."""
    x, y = mazes.generate(size=9, count=batch, seed=0)
    x, y = x.to(device), y.to(device)
    if fast and device.startswith("cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    mask = x.amax(1) > 0
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up
            sync(device)
            start = time.perf_counter()
        with autocast(device) if fast else torch.autocast("cpu", enabled=False):
            loss = progressive_loss(net, x, y, mask, alpha=0.01, iterations=iterations, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for checking on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = args.device
    if args.quick:
        width, sizes, iterations, batches, reps, train_iters, train_batch, steps = 8, [9], 5, {9: 16}, 2, 5, 16, 2
    else:
        width, sizes, iterations, reps, train_iters, train_batch, steps = 128, [9, 59, 99], 100, 3, 30, 512, 10
        batches = {9: 2048, 59: 128, 99: 48}
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name()}")
    torch.manual_seed(0)
    base = DTNet(width=width).to(device).eval()
    fast = prepare_model(DTNet(width=width), device).eval()
    fast.load_state_dict(base.state_dict())
    print(f"\nevaluation, width {width}, {iterations} iterations")
    print(f"{'size':>5}{'batch':>7}{'baseline it/s':>15}{'mlspec it/s':>14}{'speed-up':>10}{'TFLOP/s':>10}")
    for size in sizes:
        side = 2 * size + 6
        slow = eval_rate(base, size, 1, iterations, device, fast=False, reps=1)
        quick = eval_rate(fast, size, batches[size], iterations, device, fast=True, reps=reps)
        tflops = quick * block_flops(width, side) / 1e12
        print(f"{size:>5}{batches[size]:>7}{slow:15.1f}{quick:14.1f}{quick / slow:9.1f}x{tflops:10.2f}")
    print(f"\ntraining, 9x9 mazes, progressive loss, {train_iters} iterations")
    print(f"{'setting':<26}{'samples/s':>10}")
    torch.manual_seed(0)
    ref = train_rate(DTNet(width=width).to(device).train(), 50, train_iters, device, fast=False, steps=steps)
    ours = train_rate(prepare_model(DTNet(width=width), device).train(), train_batch, train_iters, device,
                      fast=True, steps=steps)
    print(f"{'DeepThinking (50, fp32)':<26}{ref:10.1f}")
    print(f"{f'mlspec ({train_batch}, fast path)':<26}{ours:10.1f}   {ours / ref:.1f}x")


if __name__ == "__main__":
    main()
