"""The sweep's Pareto plot: the drawn front is the computed one, and legend and labels stay readable."""

import random

import pytest

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from bitmos.explore.pareto import pareto_front  # noqa: E402
from bitmos.explore.sweep import SweepSpec, plot_pareto  # noqa: E402

PANELS = (("decode_tokens_per_s", "decode_uj_per_token"), ("prefill_tokens_per_s", "prefill_uj_per_token"))


def tradeoff_rows(n=40, seed=1):
    """Faster points cost more energy, so each panel's 2-D front has several points; ranges like the
    LLaMA-2-7B sweep (decode 35..140 tokens/s, prefill 130..2200 tokens/s)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t, u = rng.random(), rng.random()
        rows.append({"key": f"k{i}", "feasible": True, "luts": rng.uniform(7e4, 1.3e6),
                     "decode_tokens_per_s": 35 * 4 ** t, "decode_uj_per_token": 48000 * 1.4 ** (0.6 * t + 0.4 * u),
                     "prefill_tokens_per_s": 130 * 17 ** t,
                     "prefill_uj_per_token": 3300 * 2.5 ** (0.6 * t + 0.4 * u)})
    return rows


def draw(tmp_path, rows, monkeypatch, **spec_kw):
    spec = SweepSpec(**dict(dict(name="t", model="llama-2-7b", prefill_tokens=64), **spec_kw))
    front_keys = {rows[i]["key"] for i in pareto_front(rows, spec.objectives)}
    figs = []
    real_close = plt.close

    def keep(fig=None):
        figs.append(fig)
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    out = tmp_path / "pareto.png"
    assert plot_pareto(rows, front_keys, out, spec) == out
    assert out.stat().st_size > 1000 and not list(tmp_path.glob(".*tmp*"))  # atomic: tmp file replaced
    (fig,) = figs
    FigureCanvasAgg(fig).draw()  # closing left a bare canvas; lay out and measure as the PNG was drawn
    return fig, front_keys


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_xscale() == "log"]


def front_line(ax):
    lines = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto2d"]
    assert len(lines) == 1
    return lines[0]


def test_front_line_is_the_2d_front_in_x_order_and_on_top(tmp_path, monkeypatch):
    rows = tradeoff_rows()
    fig, _ = draw(tmp_path, rows, monkeypatch)
    axes = data_axes(fig)
    assert len(axes) == 2
    for ax, (x, y) in zip(axes, PANELS):
        want = sorted((rows[i][x], rows[i][y]) for i in pareto_front(rows, [f"max:{x}", f"min:{y}"]))
        assert len(want) >= 3
        line = front_line(ax)
        got = [tuple(map(float, p)) for p in line.get_xydata()]
        assert [c for p in got for c in p] == pytest.approx([c for p in want for c in p])
        assert line.get_drawstyle() == "default"  # straight segments through the points, not a step
        assert line.get_zorder() > max(c.get_zorder() for c in ax.collections)


def test_single_point_front_is_still_visible(tmp_path, monkeypatch):
    rows = tradeoff_rows()
    best = {"key": "best", "feasible": True, "luts": 2e6,
            "decode_tokens_per_s": 500.0, "decode_uj_per_token": 100.0,
            "prefill_tokens_per_s": 9000.0, "prefill_uj_per_token": 100.0}
    fig, _ = draw(tmp_path, rows + [best], monkeypatch)
    for ax, (x, y) in zip(data_axes(fig), PANELS):
        line = front_line(ax)
        assert [tuple(map(float, p)) for p in line.get_xydata()] == [(best[x], best[y])]
        assert line.get_marker() not in (None, "None", "", " ") and line.get_markersize() >= 4


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def shown_ticklabels(ax, axis):
    ax_ = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    out = []
    for tick in ax_.get_major_ticks() + ax_.get_minor_ticks():
        if tick.label1.get_visible() and tick.label1.get_text() and lo <= tick.get_loc() <= hi:
            out.append(tick.label1.get_window_extent())
    return out


WIDE_X = [dict(r, prefill_tokens_per_s=r["prefill_tokens_per_s"] ** 1.6) for r in tradeoff_rows()]
TABLE_MODEL = {"dim": 4096, "hidden_dim": 11008, "n_layers": 32, "n_heads": 32}


@pytest.mark.parametrize("rows", [tradeoff_rows(), WIDE_X], ids=["llama-like", "wide-x"])
@pytest.mark.parametrize("model", ["llama-2-7b", TABLE_MODEL], ids=["named", "table"])
def test_legend_outside_axes_and_labels_do_not_overlap(tmp_path, monkeypatch, rows, model):
    fig, _ = draw(tmp_path, rows, monkeypatch, model=model)
    axes = data_axes(fig)
    assert all(ax.get_legend() is None for ax in axes)
    assert len(fig.legends) == 1
    leg = fig.legends[0].get_window_extent()
    fig_box = fig.bbox
    assert fig_box.x0 - 1 <= leg.x0 and leg.x1 <= fig_box.x1 + 1 and fig_box.y0 - 1 <= leg.y0
    for ax in fig.axes:  # neither panel nor the colorbar
        assert not overlaps(leg, ax.get_window_extent())
    for ax in axes:
        for axis in "xy":
            boxes = sorted(shown_ticklabels(ax, axis), key=lambda b: b.x0 if axis == "x" else b.y0)
            assert len(boxes) >= 2
            for a, b in zip(boxes, boxes[1:]):
                assert not overlaps(a, b), [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]
        ylab = ax.yaxis.label.get_window_extent()
        assert not any(overlaps(ylab, b) for b in shown_ticklabels(ax, "y"))
        xlab = ax.xaxis.label.get_window_extent()
        assert not any(overlaps(xlab, b) for b in shown_ticklabels(ax, "x"))
    for a, b in zip(axes, axes[1:]):  # the right panel's labels stay clear of the left panel
        assert not overlaps(a.get_tightbbox(), b.get_tightbbox())


def test_titles_name_model_and_phase_and_colorbar_is_area(tmp_path, monkeypatch):
    fig, _ = draw(tmp_path, tradeoff_rows(), monkeypatch)
    dec, pre = data_axes(fig)
    assert "llama-2-7b" in dec.get_title() and "decode" in dec.get_title()
    assert "llama-2-7b" in pre.get_title() and "prefill" in pre.get_title() and "64" in pre.get_title()
    assert any(ax.get_ylabel() == "LUTs (area)" for ax in fig.axes if ax not in (dec, pre))
