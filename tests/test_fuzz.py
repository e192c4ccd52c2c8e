"""Fuzzing the front end: no spec text, however hostile, makes `check` crash or hang.

CI-friendly size here; `benchmarks/fuzz.py` runs 10,000 cases and prints crashes, hangs and time.
"""

from __future__ import annotations

from fuzzing import check_case, grammar_specs, mutated_specs
from hypothesis import HealthCheck, given, settings

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(grammar_specs())
def test_grammar_aware_specs_never_crash(case: tuple[str, str]) -> None:
    text, dialect = case
    outcome = check_case(text, dialect)
    assert outcome.state != "crash", f"{outcome.detail}\n--- spec ---\n{text}"


@FUZZ
@given(mutated_specs())
def test_mutated_shipped_specs_never_crash(case: tuple[str, str]) -> None:
    text, dialect = case
    outcome = check_case(text, dialect)
    assert outcome.state != "crash", f"{outcome.detail}\n--- spec ---\n{text}"
