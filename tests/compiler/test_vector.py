"""bitmos.compiler.vector: the vector unit's programs (resadd, silu, rmsnorm) against bitmos.formats and the naive
reference machine, and their refusals."""

import dataclasses

import numpy as np
import pytest

from bitmos.compiler.vector import (VECTOR_OPS, compile_vector, read_vector_result, reference,
                                    write_rope_table, write_vector_operands)
from bitmos import formats as F
from bitmos.config import preset_config
from bitmos.errors import UnsupportedError
from bitmos.sim import Simulator

from tests.reference_machine import ReferenceMachine


def vec(name: str):
    return dataclasses.replace(preset_config(name), vector_unit=1)


def run(cv, mem, *, naive=False):
    """The programs in order on the simulator (and, with ``naive``, on the reference machine: same memory)."""
    sim = Simulator(cv.config)
    ref_mem = bytearray(mem)
    for p in cv.programs:
        r = sim.run(p.words, mem)
        assert not r.error, r.error_message
        mem = r.memory
        if naive:
            ref_mem = ReferenceMachine(cv.config, ref_mem, grow_memory=True).run(p.words).memory
    if naive:
        assert bytes(mem) == bytes(ref_mem)
    return mem


@pytest.mark.parametrize("preset", ["small", "tiny"])
@pytest.mark.parametrize("op", [op for op in VECTOR_OPS if op != "rope"])
@pytest.mark.parametrize("tokens,K", [(1, 37), (5, 64), (3, 100)])
def test_programs_compute_the_formats_definition(preset, op, tokens, K):
    cfg = vec(preset)
    rng = np.random.default_rng(tokens * 1000 + K)
    gains = rng.integers(-(1 << 15), 1 << 15, K)
    cv = compile_vector(op, cfg, tokens, K, xfrac=9, gains=gains, gexp=14, eps_q=4295)
    a = rng.integers(-(1 << 31), 1 << 31, (tokens, K))
    a[0, 0] = (1 << 31) - 1
    b = rng.integers(-(1 << 24), 1 << 24, (tokens, K))
    b[0, 0] = 1 << 24                          # a saturating residual sum
    operands = (a, b) if len(VECTOR_OPS[op]) == 2 else (a,)
    mem = bytearray(cv.memory)
    write_vector_operands(mem, cv, *operands)
    mem = run(cv, mem, naive=(tokens * K <= 200))
    got = read_vector_result(mem, cv)
    np.testing.assert_array_equal(got, reference(cv, *operands, gains=gains))
    # a single token runs in plane mode (its lines adjacent, so its transfers move only them)
    assert cv.mode == ("plane" if tokens == 1 else "token") and len(cv.programs) == -(-tokens // cfg.rows)


def test_plane_mode_when_r_tokens_do_not_fit_twice():
    cfg = vec("small")                          # OBUF 512 lines: K = 700 needs 175 lines a token, 700 for R = 4
    rng = np.random.default_rng(1)
    cv = compile_vector("silu", cfg, 2, 700, xfrac=8)
    assert (cv.mode, cv.block, len(cv.programs)) == ("plane", 1, 2)
    g, u = rng.integers(-(1 << 22), 1 << 22, (2, 700)), rng.integers(-(1 << 22), 1 << 22, (2, 700))
    mem = bytearray(cv.memory)
    write_vector_operands(mem, cv, g, u)
    np.testing.assert_array_equal(read_vector_result(run(cv, mem), cv), reference(cv, g, u))


def test_refusals():
    with pytest.raises(UnsupportedError, match="has no vector unit"):
        compile_vector("resadd", preset_config("small"), 1, 16)
    with pytest.raises(UnsupportedError, match="unknown vector operation 'gelu'"):
        compile_vector("gelu", vec("small"), 1, 16)
    with pytest.raises(UnsupportedError,
                       match=r"does not fit config 'tiny': OBUF \(350 lines needed, 256 deep\)") as exc:
        compile_vector("rmsnorm", vec("tiny"), 1, 700, gains=[1] * 700)
    assert exc.value.field == "obuf_kib"     # the field an estimate's --auto-buffers grows
    with pytest.raises(UnsupportedError, match="rmsnorm needs K = 8 gains"):
        compile_vector("rmsnorm", vec("tiny"), 1, 8, gains=[1] * 7)
    cv = compile_vector("resadd", vec("tiny"), 2, 8)
    with pytest.raises(ValueError, match="resadd takes 2 operand"):
        write_vector_operands(bytearray(cv.memory), cv, np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"shape \(2, 9\), expected \(2, 8\)"):
        write_vector_operands(bytearray(cv.memory), cv, np.zeros((2, 9)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match="outside int32"):
        write_vector_operands(bytearray(cv.memory), cv, np.full((2, 8), 1 << 31), np.zeros((2, 8)))


@pytest.mark.parametrize("preset", ["small", "tiny"])
@pytest.mark.parametrize("tokens,heads,head_dim", [(1, 4, 32), (6, 2, 16)])
def test_rope_programs_rotate_each_token_at_its_position(preset, tokens, heads, head_dim):
    cfg = vec(preset)
    K = heads * head_dim
    rng = np.random.default_rng(tokens)
    cos_t, sin_t = F.rope_table([10000 ** (-2 * j / head_dim) for j in range(head_dim // 2)], 64)
    pos = rng.integers(0, 64, tokens)
    cos, sin = np.array([cos_t[p] for p in pos]), np.array([sin_t[p] for p in pos])
    cv = compile_vector("rope", cfg, tokens, K, head_dim=head_dim)
    x = rng.integers(-(1 << 31), 1 << 31, (tokens, K))
    mem = bytearray(cv.memory)
    write_vector_operands(mem, cv, x)
    write_rope_table(mem, cv, cos, sin)
    mem = run(cv, mem, naive=tokens == 1)
    np.testing.assert_array_equal(read_vector_result(mem, cv), reference(cv, x, cos=cos, sin=sin))
    bad = 12 if cfg.cols == 4 else 6                          # half of it not a whole number of lines
    with pytest.raises(UnsupportedError, match=f"head_dim {bad} must be even, half of it a multiple of cols"):
        compile_vector("rope", cfg, 1, 48, head_dim=bad)
    with pytest.raises(ValueError, match="rope table"):
        write_rope_table(bytearray(cv.memory), cv, cos[:, :2], sin)
