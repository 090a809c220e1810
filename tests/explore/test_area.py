import numpy as np
import pytest

from bitmos.config import AcceleratorConfig
from bitmos.explore import area as A

#: The stated accuracy of the LUT model on the records it was fitted on (docs/dse.md).
LUT_TOLERANCE = 0.25


def test_nnls_recovers_nonnegative_coefficients():
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 10, size=(12, 3))
    x_true = np.array([2.0, 0.0, 0.5])
    x = A.nnls(X, X @ x_true)
    assert np.allclose(x, x_true, atol=1e-6)
    # a negative unconstrained optimum is clamped to zero
    y = X @ np.array([1.0, -0.5, 0.0])
    assert (A.nnls(X, y) >= 0).all()


def test_model_matches_recorded_synthesis():
    recs = A.load_records()
    model = A.fit(recs, "ecp5", "array")
    assert len(model.records) >= 2
    assert model.max_error("luts") <= LUT_TOLERANCE, model.errors
    for r in recs:
        if r.get("component") == "array" and r.get("target") == "ecp5" and r.get("pnr", True):
            pred = model.predict(r["config"])["luts"]
            assert abs(pred - r["luts"]) <= LUT_TOLERANCE * r["luts"]


def test_estimate_grows_with_the_array_and_counts_brams():
    small, medium = AcceleratorConfig.load("small"), AcceleratorConfig.load("medium")
    es, em = A.estimate(small), A.estimate(medium)
    assert em["luts"] > es["luts"] > 0
    # tiny: every buffer fits one DP16KD shape column; counted per memory, at least one each
    assert A.bram_blocks(AcceleratorConfig.load("tiny")) >= 7


def test_fit_without_records_is_an_error():
    with pytest.raises(ValueError, match="no synthesis records"):
        A.fit([], "ice40", "array")
