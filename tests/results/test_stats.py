"""Statistics over seeds: Student-t quantiles and the mean with its 95 % interval."""

from __future__ import annotations

import pytest

from stagetune.results.stats import Stat, t_quantile_975


def test_t_quantiles() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062047, abs=1e-6)
    assert t_quantile_975(10) == pytest.approx(2.2281389, abs=1e-6)
    assert t_quantile_975(60) == pytest.approx(2.0002978, abs=1e-5)
    assert t_quantile_975(10_000) == pytest.approx(1.96020, abs=1e-4)


def test_stat_mean_and_student_t_ci() -> None:
    st = Stat.of([0.7, 0.75, None])
    assert st.n == 2 and st.mean == pytest.approx(0.725)
    # sd = 0.05/sqrt(2); se = sd/sqrt(2) = 0.025; t(0.975, 1) = 12.7062
    assert st.half_width == pytest.approx(12.7062047 * 0.025)
    assert st.low == pytest.approx(0.725 - 0.3176551)
    one = Stat.of([3.0])
    assert one.mean == 3.0 and one.low is None and one.half_width is None
    assert Stat.of([None]).mean is None
