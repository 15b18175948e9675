"""Latency tables: probes, found steps, interpolation, and building them with a timer (no real timing)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecc.latency.allocate import Term
from sparsecc.latency.network import LayerGeometry, PrunableLayer
from sparsecc.latency.sampling import build_tables
from sparsecc.latency.tables import AxisTable, LayerTable, detect_step, grid_counts, probe_counts
from sparsecc.latency.timers import AnalyticTimer, GpuRooflineTimer, TimedPoints, layer_graph, wrapper_graph


def staircase(step: int, per_channel: float = 1.0, base: float = 10.0, cliff: float = 0.0):
    """Time of a kernel that pads counts to ``step``; ``cliff`` adds to counts off the step (a slower path)."""
    def time(count: int) -> float:
        padded = -(-count // step) * step
        return base + per_channel * padded + (cliff if count % step else 0.0)
    return time


def probe(time_of, full: int):
    base, probes = probe_counts(full)
    return detect_step(base, time_of(base), {c: time_of(c) for c in probes})


def test_probe_counts_look_low_on_the_axis():
    assert probe_counts(64) == (32, [33, 34, 36, 40, 48, 64])
    assert probe_counts(2048) == (64, [65, 66, 68, 72, 80, 96, 128])
    assert probe_counts(3) == (3, [])


@pytest.mark.parametrize("step", [1, 2, 4, 8, 16, 32])
def test_detect_step_finds_the_staircase(step):
    assert probe(staircase(step), 256)[0] == step


def test_detect_step_sees_a_slower_path_between_multiples_as_the_step():
    # ONNX Runtime's 3x3 conv off its block: counts between multiples of 16 cost more than the next multiple
    assert probe(staircase(16, cliff=30.0), 256)[0] == 16


def test_detect_step_survives_noise():
    rng = np.random.default_rng(0)
    clean = staircase(16, per_channel=1.0, base=20.0)
    found = [probe(lambda c: clean(c) * (1 + 0.01 * rng.standard_normal()), 512)[0] for _ in range(20)]
    assert found.count(16) >= 18


def test_detect_step_without_growth_gives_no_step():
    assert probe(lambda c: 5.0, 128)[0] == 1


def test_grid_counts_are_multiples_of_the_step():
    assert grid_counts(64, 16) == [16, 32, 48, 64]
    assert grid_counts(100, 16) == [16, 32, 48, 64, 80, 96, 100]
    assert all(c % 8 == 0 or c == 1000 for c in grid_counts(1000, 8))


def test_axis_table_pads_to_the_step_and_interpolates():
    axis = AxisTable(64, 16, [16, 32, 48, 64], [0.25, 0.5, 0.75, 1.0])
    assert axis.ratio(40) == pytest.approx(0.75)  # priced as 48
    assert axis.ratio(48) == pytest.approx(0.75)
    assert axis.ratio(8) == pytest.approx(0.25)  # padded to 16
    coarse = AxisTable(64, 1, [16, 64], [0.25, 1.0])
    assert coarse.ratio(40) == pytest.approx(0.25 + 0.75 * 24 / 48)
    assert coarse.ratio(8) == pytest.approx(0.125)  # below the first sample: straight down to zero
    with pytest.raises(ValueError, match="sample at 64"):
        AxisTable(64, 16, [16, 32], [0.2, 0.5])


def test_layer_table_multiplies_its_axes_and_round_trips():
    table = LayerTable("conv", 2.0, inputs=AxisTable(32, 8, [8, 16, 24, 32], [0.25, 0.5, 0.75, 1.0]),
                       outputs=AxisTable(64, 16, [16, 32, 48, 64], [0.25, 0.5, 0.75, 1.0]))
    assert table.seconds(16, 32) == pytest.approx(2.0 * 0.5 * 0.5)
    assert LayerTable.from_dict(table.to_dict()).seconds(16, 32) == pytest.approx(0.5)
    depthwise = LayerTable("dw", 1.0, outputs=AxisTable(64, 16, [16, 32, 48, 64], [0.2, 0.5, 0.7, 1.0]),
                           depthwise=True)
    assert depthwise.seconds(32, 32) == pytest.approx(0.5)


CONV = LayerGeometry("Conv", "conv", (1, 64, 14, 14), (128, 64, 3, 3),
                     (("kernel_shape", (3, 3)), ("pads", (1, 1, 1, 1))), True, "float32")


class StaircaseTimer:
    """A "measuring" timer whose layer takes ``staircase(step)`` along each axis (a product of the two)."""

    name = "fake"
    measured = True

    def __init__(self, step_in: int, step_out: int):
        self.time_in, self.time_out = staircase(step_in, base=4.0), staircase(step_out, base=4.0)
        self.calls = 0

    def seconds(self, c_in, c_out):
        return self.time_in(c_in) * self.time_out(c_out)

    def time_points(self, geometry, reference, points):
        self.calls += 1
        base = self.seconds(*reference)
        return TimedPoints(base, {p: self.seconds(*p) / base for p in points}, "fake")

    def describe(self):
        return {"timer": self.name}


def test_tables_find_each_axis_step_and_share_equal_geometries():
    timer = StaircaseTimer(step_in=8, step_out=16)
    layers = [PrunableLayer(f"conv{i}", CONV, (Term("a"),), (Term("b"),), 0, 0) for i in range(3)]
    tables = build_tables(layers, timer)
    assert set(tables) == {"conv0", "conv1", "conv2"}
    assert tables["conv0"].inputs.step == 8 and tables["conv0"].outputs.step == 16
    assert timer.calls == 4  # probes and grid per axis, once for the three equal layers
    # the table reproduces the staircase at aligned counts and prices others at the next multiple up
    assert tables["conv1"].seconds(64, 80) == pytest.approx(timer.seconds(64, 80))
    assert tables["conv1"].seconds(64, 70) == pytest.approx(timer.seconds(64, 80))


def test_analytic_timers_look_for_no_step():
    layer = PrunableLayer("conv", CONV, (Term("a"),), (Term("b"),), 0, 0)
    for timer in (AnalyticTimer(), GpuRooflineTimer()):
        table = build_tables([layer], timer)["conv"]
        assert table.inputs.step == 1 and table.outputs.step == 1
        assert table.seconds(32, 64) < table.seconds(64, 128)


def test_timing_graphs_have_the_asked_channels():
    graph, feed = layer_graph(CONV, 48, 96)
    conv = next(n for n in graph.nodes if n.name.endswith("/conv"))
    assert conv.inputs[1].values.shape == (96, 48, 3, 3)
    assert feed["x"].shape == (1, 16, 14, 14)
    depthwise = LayerGeometry("Conv", "depthwise", (1, 64, 14, 14), (64, 1, 3, 3),
                              (("group", 64), ("kernel_shape", (3, 3)), ("pads", (1, 1, 1, 1)),
                               ("strides", (2, 2))), False, "float32")
    graph, _ = layer_graph(depthwise, 32, 32)
    conv = next(n for n in graph.nodes if n.name.endswith("/conv"))
    assert conv.attrs["group"] == 32 and conv.inputs[1].values.shape == (32, 1, 3, 3)
    wrappers, feed = wrapper_graph(depthwise, "out", 32)
    assert feed["x"].shape == (1, 16, 7, 7) and len(wrappers.nodes) == 2
