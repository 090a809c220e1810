"""Co-design sweeps (explore/codesign.py): cache keys, resume, bad input, and one real tiny study."""

import json
import subprocess
import sys

import pytest

from bitmos.app.codesign import model_side, run_sweep
from bitmos.errors import ConfigError
from bitmos.explore.codesign import chip_fields, make_plan
from bitmos.explore.sweep import SweepSpec, builtin_specs, read_results

# A real study, as small as it gets: a few hundred training tokens per student, the toy shape, one chip.
TINY = {"name": "tiny", "base": "small", "model": "toy", "prefill_tokens": 8, "energy_table": "horowitz45_hbm2",
        "workers": 0, "grid": {"scheme": ["sign", "mos"], "experts": [2], "act_bits": [8], "rows": [4]},
        "distill": {"tokens": 256, "batch_size": 4, "seq_len": 32, "eval_tokens": 512, "seeds": [1]}}


def spec(**kw):
    d = json.loads(json.dumps(TINY))
    for k, v in kw.items():
        if isinstance(v, dict) and k in ("grid", "distill"):
            d[k].update(v)
        else:
            d[k] = v
    return SweepSpec.from_dict(d)


def keys(s, tmp_path):
    plan = make_plan(s, tmp_path, "sim", model_side(s))
    return ({t["key"] for t in plan.students}, {t["key"] for t in plan.chips}, {t["key"] for t in plan.shapes})


def test_student_keys_follow_budget_and_seed_not_hardware(tmp_path):
    students, chips, shapes = keys(spec(), tmp_path)
    assert len(students) == 2 and len(chips) == 2 and len(shapes) == 2
    # a budget or a seed change retrains every student
    assert keys(spec(distill={"tokens": 512}), tmp_path)[0].isdisjoint(students)
    assert keys(spec(distill={"seeds": [2]}), tmp_path)[0].isdisjoint(students)
    assert keys(spec(distill={"lr": 2e-3}), tmp_path)[0].isdisjoint(students)
    # a hardware axis does not: the same students, new chip and shape evaluations
    s2, c2, h2 = keys(spec(grid={"rows": [8]}), tmp_path)
    assert s2 == students and c2.isdisjoint(chips) and h2.isdisjoint(shapes)
    s3, _, _ = keys(spec(grid={"rows": [4, 8]}, energy_table="horowitz45_lpddr4"), tmp_path)
    assert s3 == students
    # two seeds: two students per model point, one chip evaluation per pair
    s4, c4, _ = keys(spec(distill={"seeds": [1, 2]}), tmp_path)
    assert len(s4) == 4 and students <= s4 and c4 == chips


def test_equal_students_are_trained_once(tmp_path):
    # sign has no experts and onebit one scale set: the experts axis does not multiply them
    s = spec(grid={"scheme": ["sign", "onebit"], "experts": [1, 2, 4]})
    plan = make_plan(s, tmp_path, "sim", model_side(s))
    assert len(plan.students) == 2 and len(plan.pairs) == 2   # one row each, not one per experts value
    assert chip_fields("sign", 4, 8) == {"experts": 0, "act_bits": 8, "weight_bits": 1}
    assert chip_fields("onebit", 4, 4) == {"experts": 1, "act_bits": 4, "weight_bits": 1}
    assert chip_fields("mos", 2, 8) == {"experts": 2, "act_bits": 8, "weight_bits": 1}
    # FBI-LLM needs a router for its beta . x: the two-expert chip, whatever the experts axis says
    assert chip_fields("fbi", 4, 8) == {"experts": 2, "act_bits": 8, "weight_bits": 1}
    s = spec(grid={"scheme": ["fbi"], "experts": [1, 4]})
    assert len(make_plan(s, tmp_path / "fbi", "sim", model_side(s)).students) == 1


def test_ternary_point_is_one_student_on_a_two_plane_chip(tmp_path):
    assert chip_fields("ternary", 4, 8) == {"experts": 0, "act_bits": 8, "weight_bits": 2}
    assert chip_fields("ternary", 1, 2) == {"experts": 0, "act_bits": 2, "weight_bits": 2}
    s = spec(grid={"scheme": ["sign", "ternary"], "experts": [1, 2, 4]})
    plan = make_plan(s, tmp_path, "sim", model_side(s))
    assert len(plan.students) == 2 and len(plan.pairs) == 2   # ternary has no experts either
    pair = {p["model_point"]["scheme"]: p for p in plan.pairs}
    assert pair["ternary"]["model_point"] == {"scheme": "ternary", "act_bits": 8, "experts": 0}
    chips = {c["key"]: c for c in plan.chips}
    assert chips[pair["ternary"]["chip"]]["config"]["weight_bits"] == 2
    assert chips[pair["sign"]["chip"]]["config"]["weight_bits"] == 1
    assert chips[pair["ternary"]["chip"]]["config"]["experts"] == 0


def test_sign_and_ternary_estimates_are_two_shape_units_in_their_weight_format(tmp_path):
    from bitmos.explore.codesign import evaluate_shape, shape_task

    s = spec(grid={"scheme": ["sign", "ternary"]})
    plan = make_plan(s, tmp_path, "sim", model_side(s))
    shapes = {t["key"]: t for t in plan.shapes}
    pair = {p["model_point"]["scheme"]: p for p in plan.pairs}
    sign, tern = shapes[pair["sign"]["shape"]], shapes[pair["ternary"]["shape"]]
    assert len(shapes) == 2 and "w_bits" not in sign and tern["w_bits"] == 2   # sign: the plain sweep's task
    # on one and the same config, the weight format alone makes a distinct unit
    plain = {k: v for k, v in tern.items() if k not in ("w_bits", "key")}
    from bitmos.explore.sweep import point_key

    plain["key"] = point_key(plain)
    assert shape_task(plain, 0) is plain and shape_task(plain, 2)["key"] == tern["key"] != plain["key"]
    # and the estimate runs in it: two planes per weight halve the bandwidth bound and slow decode
    r0, r2 = evaluate_shape(plain), evaluate_shape(tern)
    assert r0["feasible"] and r2["feasible"], (r0, r2)
    assert r2["w_bits"] == 2 and r0["config"]["weight_bits"] == r2["config"]["weight_bits"] == 2
    assert r0["decode_bound_tokens_per_s"] == pytest.approx(2 * r2["decode_bound_tokens_per_s"])
    assert r2["decode_cycles"] > r0["decode_cycles"] and r2["prefill_cycles"] > r0["prefill_cycles"]
    assert r2["decode_uj_per_token"] > r0["decode_uj_per_token"]


def test_ternary_shape_unit_on_a_sign_only_config_is_infeasible_not_a_crash():
    from bitmos.explore.codesign import evaluate_shape, shape_task
    from bitmos.explore.sweep import make_tasks

    task = make_tasks(SweepSpec.from_dict({"name": "p", "base": "small", "model": "toy", "prefill_tokens": 8,
                                           "points": [{"weight_bits": 1}]}), "sim")[0]
    row = evaluate_shape(shape_task(task, 2))
    assert not row["feasible"] and "weight_bits" in row["reason"]


@pytest.mark.parametrize("grid, match", [
    ({"scheme": ["bogus"]}, "scheme = 'bogus'"),
    ({"scheme": ["pb"], "pb_fraction": [1.5]}, "pb_fraction = 1.5 must be a number in"),
    ({"scheme": ["mos"], "experts": [9]}, "experts = 9"),
    ({"scheme": ["mos"], "act_bits": ["8"]}, "act_bits = '8'"),
    ({"scheme": ["mos"], "lanes": [36]}, "lanes"),
    ({"scheme": ["mos", "ternary"], "act_bits": [1]}, "scheme 'ternary' at act_bits = 1: .* need act_bits >= 2"),
])
def test_bad_model_or_hardware_axis_is_one_error(tmp_path, grid, match):
    with pytest.raises(ConfigError, match=match):
        run_sweep(spec(grid=grid), out=tmp_path / "bad")
    assert not list((tmp_path / "bad" / "students").glob("*"))   # nothing trained


def test_unknown_reference_point_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match="plot.reference = 'mos E8 A8' is not a model point"):
        run_sweep(spec(plot={"reference": "mos E8 A8"}), out=tmp_path / "r")
    assert not list((tmp_path / "r" / "students").glob("*"))


def test_the_explore_layer_asks_for_the_model_side(tmp_path):
    from bitmos.explore.sweep import run_sweep as explore_run_sweep

    with pytest.raises(ConfigError, match="trains students"):
        explore_run_sweep(spec(), out=tmp_path / "x")


def test_bad_spec_fails_on_load():
    with pytest.raises(ConfigError, match="model axes"):
        SweepSpec.from_dict({"grid": {"scheme": ["mos"]}})
    with pytest.raises(ConfigError, match="tokens = 0"):
        spec(distill={"tokens": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        spec(distill={"steps": 3})
    with pytest.raises(ConfigError, match="seeds"):
        spec(distill={"seeds": [1, 1]})
    with pytest.raises(ConfigError, match="unknown objective"):
        spec(objectives=["min:val_pp"])


@pytest.mark.parametrize("grid,message", [
    ('scheme = ["pb"]\npb_fraction = ["0.1"]', "pb_fraction = '0.1' must be a number in [0, 1)"),
    ('scheme = ["ternary"]\nact_bits = [1]', "scheme 'ternary' at act_bits = 1"),
])
def test_cli_refused_point_exits_with_one_line_before_training(tmp_path, grid, message):
    s = tmp_path / "s.toml"
    s.write_text(f'name = "x"\nbase = "small"\n[grid]\n{grid}\n[distill]\ntokens = 64\n')
    p = subprocess.run([sys.executable, "-m", "bitmos.app.cli", "sweep", str(s), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not list((tmp_path / "o").rglob("*.safetensors"))


def test_ternary_area_carries_the_weight_plane_term(tmp_path):
    from bitmos.config import AcceleratorConfig
    from bitmos.explore import area
    from bitmos.explore.codesign import write_codesign_outputs

    base = AcceleratorConfig.load("small").to_dict()
    rows = []
    for scheme, wb, ppl, tps in (("sign", 1, 5.0, 200.0), ("ternary", 2, 4.5, 120.0)):
        rows.append({"key": scheme, "label": f"{scheme} A8", "scheme": scheme, "experts": 0, "act_bits": 8,
                     "w_bits": 2 * (wb - 1), "hardware": {"rows": 4}, "feasible": True, "val_ppl": ppl,
                     "val_ppl_std": 0.0, "config": dict(base, experts=0, weight_bits=wb),
                     **{m: tps for m in ("shape_decode_tokens_per_s", "shape_prefill_tokens_per_s",
                                         "student_decode_tokens_per_s", "student_prefill_tokens_per_s")},
                     "shape_decode_uj_per_token": 1e4 / tps, "student_decode_uj_per_token": 1e3 / tps})
    write_codesign_outputs(spec(), rows, None, tmp_path, "sign A8")
    got = {r["key"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert got["sign"]["area_source"].startswith("model:") and got["ternary"]["area_source"].startswith("model:")
    # the array's weight-plane term: a ternary chip costs more LUTs than its sign-only twin, by the model's figure
    model = area.preferred_model(spec().target)
    assert got["ternary"]["luts"] > got["sign"]["luts"] > 0
    assert got["ternary"]["luts"] == round(model.predict(got["ternary"]["config"])["luts"])


def test_tiny_study_end_to_end_and_resume(tmp_path):
    out = tmp_path / "cd"
    first = run_sweep(spec(), out=out, limit=2)          # the teacher and one student, then stopped
    assert first["computed"] == 2 and first["points"] == 2
    second = run_sweep(spec(), out=out)
    assert second["skipped"] == 2 and second["computed"] == 1 + 2 + 2   # one student, two chips, two shapes
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["feasible"] for r in rows), rows
    for r in rows:
        assert r["val_ppl"] > 1 and r["ppl_vs_teacher"] > 0
        assert r["student_decode_tokens_per_s"] > 0 and r["student_prefill_uj_per_token"] > 0
        assert r["shape_decode_tokens_per_s"] > 0 and r["luts"] > 0
    assert {r["config"]["experts"] for r in rows} == {0, 2}
    fronts = json.loads((out / "fronts.json").read_text())
    assert set(fronts) >= {"all", "shape_decode_uj_per_token", "luts"} and fronts["all"]
    assert (out / "results.csv").read_text().count("\n") == 3
    assert (out / "pareto.png").stat().st_size > 1000
    # a rerun computes nothing; a hardware point added later reuses both students
    assert run_sweep(spec(), out=out)["computed"] == 0
    third = run_sweep(spec(grid={"rows": [4, 8]}), out=out)
    assert third["computed"] == 2 + 2 and third["points"] == 4
    # a deleted student checkpoint is trained again (its chips need the weights), nothing else is
    ckpt = next((out / "students").glob("*.safetensors"))
    ckpt.unlink()
    assert run_sweep(spec(), out=out)["computed"] == 1 and ckpt.exists()
    assert len(read_results(out / "results.jsonl")) == 1 + 2 + 4 + 4


def test_shipped_study_spec_loads():
    assert "codesign" in builtin_specs()
    s = SweepSpec.load("codesign")
    assert s.distill and s.objectives[0] == "min:val_ppl"
    assert s.grid["scheme"] == ["sign", "onebit", "mos", "ternary", "fbi", "bitnet", "pb"]


def test_pb_points_get_their_chip_and_a_split_estimate(tmp_path):
    """Structured PB-LLM: an int8-capable chip (E = 1, eight weight planes, 32-bit sums) and, per salient
    fraction, its own large-shape unit in which every linear is a sign layer and an int8 layer."""
    from bitmos.explore.codesign import evaluate_shape, point_label

    assert chip_fields("pb", 4, 8) == {"experts": 1, "act_bits": 8, "weight_bits": 8, "acc_bits": 32}
    s = spec(grid={"scheme": ["sign", "pb"], "pb_fraction": [0.1, 0.25]})
    plan = make_plan(s, tmp_path, "sim", model_side(s))
    assert len(plan.students) == 3 and len(plan.shapes) == 3      # sign once; pb at two fractions
    shapes = {t["key"]: t for t in plan.shapes}
    by = {point_label(p["model_point"]): shapes[p["shape"]] for p in plan.pairs}
    assert set(by) == {"sign A8", "pb 0.1 A8", "pb 0.25 A8"}
    assert by["pb 0.1 A8"]["scheme"] == "pb" and by["pb 0.1 A8"]["w_bits"] == 8 and "scheme" not in by["sign A8"]
    r10, r25 = evaluate_shape(by["pb 0.1 A8"]), evaluate_shape(by["pb 0.25 A8"])
    assert r10["feasible"] and r25["feasible"], (r10, r25)
    # more int8 channels: more weight bits per token, a lower bandwidth bound and slower decode
    assert r25["decode_bound_tokens_per_s"] < r10["decode_bound_tokens_per_s"]
    assert r25["decode_cycles"] > r10["decode_cycles"]


@pytest.mark.slow
def test_tiny_ternary_study_end_to_end(tmp_path):
    out = tmp_path / "t"
    summary = run_sweep(spec(grid={"scheme": ["sign", "ternary"]}), out=out)
    assert summary["computed"] == 1 + 2 + 2 + 2 and summary["infeasible"] == 0
    rows = {r["scheme"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    sign, tern = rows["sign"], rows["ternary"]
    assert tern["w_bits"] == 2 and tern["config"]["weight_bits"] == 2 and sign["config"]["weight_bits"] == 1
    assert tern["student_config"]["weight_bits"] == 2 and tern["val_ppl"] > 1
    # two planes per weight: half the bandwidth bound, for the student and at the shape
    assert sign["student_decode_bound_tokens_per_s"] == pytest.approx(2 * tern["student_decode_bound_tokens_per_s"])
    assert sign["shape_decode_bound_tokens_per_s"] == pytest.approx(2 * tern["shape_decode_bound_tokens_per_s"])
    assert tern["shape_decode_tokens_per_s"] < sign["shape_decode_tokens_per_s"]
    assert tern["luts"] > sign["luts"]          # two weight planes: the area model's weight_bits term


@pytest.mark.slow
def test_tiny_study_on_dask(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  protocol="tcp://", host="127.0.0.1") as cluster:
        summary = run_sweep(spec(), out=tmp_path / "d", scheduler=cluster.scheduler_address)
    assert summary["computed"] == 1 + 2 + 2 + 2 and summary["infeasible"] == 0


@pytest.fixture
def one_thread():
    # a tiny model on a shared 2-core machine: one torch thread, as the sweep's workers use
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_chip_figures_come_from_programs_checked_against_golden(one_thread):
    import numpy as np

    from bitmos.compiler import compile_model
    from bitmos.config import AcceleratorConfig
    from bitmos.app.codesign import run_checked
    from bitmos.explore.perf import Infeasible
    from bitmos.model.checkpoint import load_shipped
    from bitmos.model.export import export_model

    model, _ = load_shipped("student")
    cfg = AcceleratorConfig.load("small")
    export = export_model(model, cfg)
    compiled = compile_model(export, cfg, 2)
    runs = run_checked(export, compiled, 2, seed=0)
    assert len(runs) == sum(len(layer.programs) for layer in compiled.layers) and all(r.cycles > 0 for r in runs)
    # programs that do not compute the layer the golden model holds are refused, naming the layer
    lin = export.linears[3]
    lin.signs = np.logical_not(np.asarray(lin.signs))
    with pytest.raises(Infeasible, match=f"{lin.name}.*differ from the golden model"):
        run_checked(export, compile_model(export_model(model, cfg), cfg, 2), 2, seed=0)


@pytest.mark.slow
def test_tiny_pb_study_end_to_end(tmp_path):
    """A structured PB-LLM student trained, run on its int8-capable chip with every layer checked against golden,
    and estimated at the shape as two chip layers per linear, beside sign."""
    out = tmp_path / "pb"
    summary = run_sweep(spec(grid={"scheme": ["sign", "pb"]}), out=out)
    assert summary["infeasible"] == 0
    rows = {r["scheme"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    sign, pb = rows["sign"], rows["pb"]
    assert pb["w_bits"] == 8 and pb["config"]["weight_bits"] == 8 and pb["config"]["acc_bits"] == 32
    assert pb["student_golden_checked"] and pb["val_ppl"] > 1
    # int8 salient channels: more weight bits per token than sign, for the student and at the shape
    assert pb["student_decode_bound_tokens_per_s"] < sign["student_decode_bound_tokens_per_s"]
    assert pb["shape_decode_bound_tokens_per_s"] < sign["shape_decode_bound_tokens_per_s"]
    assert pb["shape_decode_tokens_per_s"] < sign["shape_decode_tokens_per_s"]
