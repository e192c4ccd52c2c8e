"""Fuzz the front end with 10,000 hostile specs (half grammar-aware, half mutations of the shipped
specs) and print crashes, hangs and the time per case. Targets: 0 crashes, 0 hangs, every case
under 2 s. Also times `check` of a 2,000- and a 20,000-statement spec: linear checking means the
second takes about ten times the first (the named baseline).

Run:  python benchmarks/fuzz.py [CASES]
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import Outcome, check_case, grammar_specs, mutated_specs  # noqa: E402

HANG_S = 10  # a case still running after this long is a hang
SLOW_S = 2.0


def _on_alarm(_signum: int, _frame: object) -> None:
    raise TimeoutError


def run_cases(strategy, count: int) -> list[tuple[Outcome, str]]:
    found: list[tuple[Outcome, str]] = []

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(case: tuple[str, str]) -> None:
        text, dialect = case
        signal.alarm(HANG_S)
        try:
            outcome = check_case(text, dialect)
        except TimeoutError:
            outcome = Outcome("hang", float(HANG_S))
        finally:
            signal.alarm(0)
        found.append((outcome, text))

    one()
    return found


def statements(n: int) -> str:
    lines = ['study "big"', "data digits = digits(test_fraction = 0.25)",
             "model init = mlp(in = 64, hidden = [8], out = 10)"]
    for i in range(n // 3):
        lines += [f"model a{i} = train(init, on = digits, epochs = 1)", f"merge m{i} = average(init, a{i})",
                  f"evaluate [m{i}] on digits metrics [accuracy]"]
    return "\n".join(lines) + "\n"


def main() -> None:
    import mlspec

    signal.signal(signal.SIGALRM, _on_alarm)
    for dialect in ("merge", "extrap"):  # build the parsers and import the operators before timing
        check_case("", dialect)
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {"grammar-aware": run_cases(grammar_specs(), total // 2),
               "mutated shipped specs": run_cases(mutated_specs(), total - total // 2)}
    print(f"\n{'generator':<24}{'cases':>7}{'ok':>7}{'spec err':>10}{'crash':>7}{'hang':>6}{'>2 s':>6}"
          f"{'median ms':>11}{'max s':>8}")
    for name, cases in results.items():
        states = [o.state for o, _ in cases]
        times = [o.seconds for o, _ in cases]
        print(f"{name:<24}{len(cases):>7}{states.count('ok'):>7}{states.count('spec error'):>10}"
              f"{states.count('crash'):>7}{states.count('hang'):>6}{sum(t > SLOW_S for t in times):>6}"
              f"{statistics.median(times) * 1000:>11.1f}{max(times):>8.2f}")
    for name, cases in results.items():
        for outcome, text in cases:
            if outcome.state in ("crash", "hang") or outcome.seconds > SLOW_S:
                print(f"\n[{name}] {outcome.state} in {outcome.seconds:.2f} s: {outcome.detail}\n{text[:400]!r}")

    timings = {}
    for n in (2_000, 20_000):
        text = statements(n)
        start = time.perf_counter()
        mlspec.loads(text, "big.merge").check()
        timings[n] = time.perf_counter() - start
    print(f"\ncheck of a 2,000-statement spec (baseline): {timings[2_000]:.2f} s; of 20,000: "
          f"{timings[20_000]:.2f} s ({timings[20_000] / timings[2_000]:.1f}x for 10x the statements)")


if __name__ == "__main__":
    main()
