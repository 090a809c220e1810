import dataclasses

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


def test_integer_weight_planes_are_a_fitted_term():
    recs = [r for r in A.load_records() if r.get("component") == "array" and r.get("target") == "ecp5"]
    wide = [r for r in recs if r["config"].get("weight_bits", 1) >= 2]
    assert wide, "no integer-weight (weight_bits >= 2) array records shipped"
    model = A.fit(recs, "ecp5", "array")
    small = AcceleratorConfig.load("small").to_dict()
    sign, ternary = (model.predict(dict(small, weight_bits=b))["luts"] for b in (1, 2))
    assert model.coef["luts"]["rc_wlog"] > 0 and ternary > sign
    # a config dict from before the field existed is a sign-only array
    assert model.predict({k: v for k, v in small.items() if k != "weight_bits"})["luts"] == pytest.approx(sign)


def test_estimate_grows_with_the_array_and_counts_brams():
    small, medium = AcceleratorConfig.load("small"), AcceleratorConfig.load("medium")
    es, em = A.estimate(small), A.estimate(medium)
    assert em["luts"] > es["luts"] > 0
    assert A.bram_blocks(medium) > A.bram_blocks(small)


def test_bram_count_equals_every_recorded_accelerator():
    recs = [r for r in A.load_records() if r.get("component") == "accelerator" and r.get("target") == "ecp5"]
    assert recs, "no accelerator-level synthesis records shipped"
    for r in recs:
        cfg = AcceleratorConfig.from_dict(r["config"])
        # a record counts the META width of the contract it was synthesized under (32 bits more since BIAS)
        assert A.bram_blocks(cfg, meta_bits=r["meta_bits"]) == r["brams"], r["config_name"]


def test_bram_count_follows_the_port_structure():
    tiny = AcceleratorConfig.load("tiny")
    # tiny: IMEM 4; X 32 x 512: 2 (true dual port, 18 bits x 1024, or two 36 x 512 copies); W 32 x 1024:
    # 2 (true dual port; two copies would be 4); S 1 (E = 0: one reader); Q 1; OBUF 64 x 256: DMA bank 4
    # (true dual port) + compute bank 2 readers x 2; META 16 lines -> distributed RAM; no exponent table
    assert A.bram_blocks(tiny) == 4 + 2 + 2 + 1 + 1 + 4 + 4
    assert A.true_dual_port_blocks(128, 1024) == 8 and A.memory_blocks(128, 1024) == 8   # small's W: 8, not 16
    assert A.memory_blocks(32, 16) == 0 and A.memory_blocks(32, 17) == 1 and A.memory_blocks(37, 512) == 2


def test_accelerator_model_matches_its_records():
    recs = A.load_records()
    model = A.fit(recs, "ecp5", "accelerator")
    assert set(model.coef) == {"luts", "ffs", "dsps"}
    assert model.max_error("luts") <= LUT_TOLERANCE, model.errors
    assert model.max_error("dsps") <= LUT_TOLERANCE, model.errors


def test_fit_without_records_is_an_error():
    with pytest.raises(ValueError, match="no synthesis records"):
        A.fit([], "ice40", "array")


def test_the_dma_queue_is_an_area_term():
    """A config's DMA queue slots beyond the first are a feature of the accelerator model (0 for one
    transfer in flight and for records made before the field), fitted on the queued records shipped."""
    small = AcceleratorConfig.load("small")
    names = A.feature_names("accelerator", "luts")
    slots = {q: A.features(dataclasses.replace(small, dma_queue=q), "accelerator")[names.index("queue_slots")]
             for q in (0, 1, 2, 8)}
    assert slots == {0: 0, 1: 0, 2: 1, 8: 7}
    assert A.features({k: v for k, v in small.to_dict().items() if k != "dma_queue"}, "accelerator") == \
        A.features(small, "accelerator")
    recs = A.load_records()
    queued = [r for r in recs if r.get("component") == "accelerator" and r["config"].get("dma_queue", 0) >= 2]
    assert queued, "no queued accelerator record shipped"
    model = A.fit(recs, "ecp5", "accelerator")
    assert model.coef["luts"]["queue_slots"] > 0 and model.coef["ffs"]["queue_slots"] > 0
    one, eight = model.predict(small), model.predict(dataclasses.replace(small, dma_queue=8))
    assert eight["luts"] > one["luts"] and eight["ffs"] > one["ffs"]
