"""The A/B routes' significance tests (webmoe/serve/significance.py) against scipy.stats on known inputs:
the two-proportion z-test is the chi-square test of the 2x2 table without continuity correction, and
Welch's test is scipy's t-test with unequal variances, p-value and all, from 3 values a side to 5,000 (an
earlier version used the normal approximation, which halved a small p-value at 50 a side: 3.3e-5 against
6.5e-5). And the routes' andon rolls an arm back on its 95th-percentile latency over its latest requests."""
import numpy as np
import pytest
from scipy import stats

from webmoe.serve.routes import Route
from webmoe.serve.significance import incomplete_beta, proportion_test, welch_test


@pytest.mark.parametrize("k1, n1, k2, n2", [(30, 200, 45, 210), (5, 50, 5, 50), (0, 100, 7, 100),
                                            (900, 1000, 870, 1000)])
def test_proportion_test_is_the_chi_square_test_of_the_table(k1, n1, k2, n2):
    want = stats.chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False).pvalue
    assert proportion_test(k1, n1, k2, n2) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n, shift", [(3, 1.0), (8, 0.5), (50, 0.3), (400, 0.0), (5000, 0.05)])
def test_welch_test_is_scipys_t_test(n, shift):
    rng = np.random.default_rng(n)
    a, b = rng.normal(1.0, 0.5, n), rng.normal(1.0 + shift, 0.7, n + 13)
    want = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_test(a.tolist(), b.tolist()) == pytest.approx(want, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("a, b", [(0.5, 0.5), (2.5, 0.5), (60.0, 0.5), (3.0, 7.0)])
def test_incomplete_beta_is_scipys(a, b):
    for x in (1e-6, 0.01, 0.3, 0.5, 0.77, 0.999):
        assert incomplete_beta(a, b, x) == pytest.approx(stats.beta.cdf(x, a, b), rel=1e-9, abs=1e-300)


def test_too_little_data_gives_no_p_value():
    assert proportion_test(0, 0, 3, 10) is None and welch_test([1.0], [1.0, 2.0]) is None


def test_an_arm_past_its_p95_latency_is_rolled_back_to_the_control():
    """Fast requests keep the arm; slow ones among its latest `window` requests give its traffic to the
    control, and the event says why; failed requests' times are not latencies; the control itself is never
    rolled back."""
    route = Route("chat", [("a", 0.5), ("b", 0.5)], p95_s=1.0, min_requests=5, window=10)
    control, arm = route.arms
    for _ in range(40):
        route.record(arm, True, 0.5, 8)
        route.record(arm, False, 9.0, 0)             # an error's time is no latency
        route.record(control, True, 5.0, 8)          # a slow control stays the control
    assert route.events == [] and arm.weight == 0.5
    route.record(arm, True, 3.0, 8)
    assert arm.weight == 0.0 and control.weight == 1.0
    [event] = route.events
    assert event["rolled_back"] == "b" and event["why"] == "p95 latency 3.00 s over its last 10 requests > 1.0 s"
