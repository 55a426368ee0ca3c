"""Statistics of per-seed results, on cases worked by hand."""
import pytest

from maskrcnnpp.analysis.stats import mean_std, paired_t_test


def test_the_paired_difference_gets_its_95_percent_confidence_interval():
    # differences 2, 3, 4: mean 3, sample std 1, n 3; t(0.975, 2 df) = 4.302653, so the interval
    # is 3 +- 4.302653 / sqrt(3) = 3 +- 2.484138
    test = paired_t_test([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert test["mean_difference"] == pytest.approx(3.0)
    assert test["ci95"] == pytest.approx([0.515862, 5.484138], abs=1e-6)
    # t = 3 / (1 / sqrt(3)) = 5.196152, two-sided p with 2 df = 0.035098
    assert test["t"] == pytest.approx(5.196152, abs=1e-6)
    assert test["p"] == pytest.approx(0.035098, abs=1e-6)


def test_identical_differences_leave_the_test_undefined_and_the_interval_a_point():
    test = paired_t_test([3.0, 4.0], [1.0, 2.0])
    assert (test["t"], test["p"]) == (None, None)
    assert test["ci95"] == pytest.approx([2.0, 2.0])


def test_a_metric_that_does_not_apply_has_no_difference():
    assert paired_t_test([None, 1.0], [1.0, 2.0]) == {
        "mean_difference": None, "t": None, "p": None, "ci95": None}
    assert mean_std([1.0, None]) == (None, None)
