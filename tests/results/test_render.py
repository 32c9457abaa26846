"""The outcome table as text: cells, markers and seed counts."""

from __future__ import annotations

from stagetune.results import compute_matched, format_table
from tests.results.helpers import BASE0, study, trial


def test_marker_never_rounds_up_to_the_baselines_compute() -> None:
    nearly = trial("n", "n", "0", [33, 66, 99.8], [4.0, 3.6, 3.2])
    table = format_table(compute_matched(study(BASE0, nearly)))
    assert "@ 99.8%" in table and "@ 100%" not in table
