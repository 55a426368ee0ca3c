"""Statistics of per-seed results: mean and spread, and paired tests against a baseline."""
import math
import warnings

import numpy as np
import scipy.stats

PAIRED_TEST = "scipy.stats.ttest_rel, two-sided, paired by seed"


def mean_std(values):
    """Mean and sample standard deviation (None for a single value); both None where a value is
    None, i.e. the metric does not apply to the model (mask AP of a box-only model) or is NaN."""
    if any(value is None for value in values):
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def paired_t_test(ours, theirs):
    """Two-sided paired t-test of ``ours`` against ``theirs`` (the same seeds, in the same order).

    Returns the mean difference, t and p; t and p are None where every pair differs by the same
    amount (the test is undefined), all three where a value is None (see :func:`mean_std`).
    """
    if any(value is None for value in [*ours, *theirs]):
        return {"mean_difference": None, "t": None, "p": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: p is NaN
        t, p = scipy.stats.ttest_rel(ours, theirs)
    return {
        "mean_difference": float(np.mean(np.subtract(ours, theirs))),
        "t": None if math.isnan(t) else float(t),
        "p": None if math.isnan(p) else float(p),
    }
