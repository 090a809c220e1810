import json

import pytest

from bitmos.explore.sweep import SweepSpec, read_results, run_sweep


def spec(**kw):
    d = {"name": "t", "base": "small", "model": "toy", "prefill_tokens": 8, "energy_table": "horowitz45_hbm2",
         "backend": "auto", "auto_buffers": True, "workers": 0,
         "grid": {"rows": [2, 4], "lanes": [32, 64]}}
    d.update(kw)
    return SweepSpec.from_dict(d)


def test_resume_skips_done_points(tmp_path):
    out = tmp_path / "s"
    first = run_sweep(spec(), out=out, limit=2)
    assert first["computed"] == 2 and first["points"] == 4
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # a torn line from a crash mid-write is ignored and does not eat the next record
    with open(out / "results.jsonl", "a") as f:
        f.write('{"key": "torn')
    second = run_sweep(spec(), out=out)
    assert second["skipped"] == 2 and second["computed"] == 2
    done = read_results(out / "results.jsonl")
    assert len(done) == 4
    third = run_sweep(spec(), out=out)
    assert third["computed"] == 0 and third["skipped"] == 4
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(r["feasible"] for r in rows)
    assert all(r["decode_tokens_per_s"] > 0 and r["prefill_uj_per_token"] > 0 for r in rows)
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "pareto.png").stat().st_size > 1000


def test_a_changed_estimator_recomputes_instead_of_reusing(tmp_path, monkeypatch):
    """Rows of a sweep run before a contract, compiler or simulator change are not reused: the estimator's
    fingerprint is part of every point's key."""
    from bitmos.explore import sweep as S

    out = tmp_path / "s"
    s = spec(grid={"rows": [2, 4]})
    assert run_sweep(s, out=out)["computed"] == 2
    assert run_sweep(s, out=out)["skipped"] == 2
    real = S.estimator_fingerprint()
    assert len(real) == 16 and real == S.estimator_fingerprint()
    monkeypatch.setattr(S, "estimator_fingerprint", lambda: "0" * 16)   # as after an edit of semantics.py
    again = run_sweep(s, out=out)
    assert again["computed"] == 2 and again["skipped"] == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2


def test_infeasible_point_is_reported_not_raised(tmp_path):
    s = spec(grid={}, points=[{"lanes": 36}], auto_buffers=False)  # lanes not a multiple of 8
    summary = run_sweep(s, out=tmp_path / "bad")
    assert summary["infeasible"] == 1
    row = next(iter(read_results(tmp_path / "bad" / "results.jsonl").values()))
    assert not row["feasible"] and "lanes" in row["reason"]


def test_bad_spec_key():
    from bitmos.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        SweepSpec.from_dict({"gird": {}})


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None, protocol="tcp://",
                                  host="127.0.0.1") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        summary = run_sweep(spec(grid={"rows": [2, 4]}), out=tmp_path / "d", scheduler=cluster.scheduler_address)
    assert summary["computed"] == 2 and summary["infeasible"] == 0


def test_a_shipped_spec_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    """`bitmos sweep llama7b` works outside the repo; an unknown bare name says which specs are shipped."""
    from bitmos.config import ConfigError
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec.load("llama7b")
    assert spec.name == "llama7b" and spec.base_config().name == "asic32"
    with pytest.raises(ConfigError, match=r"'nosuch' is neither a file nor a shipped spec \(shipped: .*llama7b"):
        SweepSpec.load("nosuch")
    (tmp_path / "llama7b").write_text('name = "mine"\nbase = "tiny"\n')   # a file of that name wins
    assert SweepSpec.load("llama7b").name == "mine"


def test_a_dma_queue_axis_is_a_column_and_an_objective(tmp_path):
    """Fields added after contract v2 (here dma_queue) sweep like the others: a CSV column, an objective name."""
    import csv

    out = tmp_path / "s"
    s = spec(grid={"dma_queue": [0, 4]}, objectives=["max:decode_tokens_per_s", "min:dma_queue"])
    assert run_sweep(s, out=out)["computed"] == 2
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["dma_queue"] for r in rows) == ["0", "4"]
    by = {r["dma_queue"]: float(r["decode_tokens_per_s"]) for r in rows}
    assert by["4"] > by["0"]          # small's decode overlaps its transfers' latencies
