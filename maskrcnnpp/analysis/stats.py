"""Statistics of per-seed results: mean and spread, and paired tests against a baseline."""
import math

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

    Returns the mean difference, t, p and the 95 % confidence interval of the mean difference
    (Student's t with n - 1 degrees of freedom: what a reader needs to judge a difference's size,
    not only its sign); t and p are None where every pair differs by the same amount (the test is
    undefined; the interval is then that one difference), all four where a value is None (see
    :func:`mean_std`).
    """
    if any(value is None for value in [*ours, *theirs]):
        return {"mean_difference": None, "t": None, "p": None, "ci95": None}
    differences = np.subtract(ours, theirs)
    t = p = math.nan  # undefined where every difference is the same (scipy says NaN or inf)
    if np.ptp(differences) > 0:
        t, p = scipy.stats.ttest_rel(ours, theirs)
    mean = float(np.mean(differences))
    half_width = (float(scipy.stats.t.ppf(0.975, len(differences) - 1)
                        * np.std(differences, ddof=1) / math.sqrt(len(differences))))
    return {
        "mean_difference": mean,
        "t": None if math.isnan(t) else float(t),
        "p": None if math.isnan(p) else float(p),
        "ci95": [mean - half_width, mean + half_width],
    }
