"""Registries that register: built-in lowerings on import, and a user's lowerings, passes and criteria
from a recipe's ``imports:`` (through the CLI) or an installed package's entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from graphs import init, make_model, randn, save
from onnx import helper

from sparsecc.errors import OptionError

BUILT_IN_LOWERINGS = {"channel-gather", "tap-gather", "depthwise", "kernel-crop", "dr-grouped", "dr-compact",
                      "groupwise-conv-plugin", "groupwise-linear-plugin", "depthwise-subgemm-plugin"}

# A user's module: one lowering of the group-wise family (a Slice of a contiguous run of kept input
# channels instead of a Gather) and one pass, written against the public API only.
USER_MODULE = '''
import numpy as np

from sparsecc.lowering import Candidate, Lowering, emit_conv, register_lowering
from sparsecc.passmanager import Pass, PassResult, Role, register_pass


def propose(view):
    weight = view.weight
    if view.layer.group != 1 or view.in_shape is None or view.out_shape is None:
        return "needs an ungrouped conv with known shapes"
    read = np.flatnonzero(np.any(weight != 0, axis=(0, 2, 3)))
    if read.size in (0, weight.shape[1]):
        return "no run of unread input channels to slice away"
    first, last = int(read[0]), int(read[-1]) + 1
    small = weight[:, first:last]

    def emit(em, x, y):
        sliced = em.var("sliced")
        em.node("Slice", [x, em.ints("starts", [first]), em.ints("ends", [last]), em.ints("axes", [1])],
                [sliced], "slice")
        emit_conv(em, sliced, y, view.node, small, view.bias)

    pixels = int(np.prod(view.out_shape)) // weight.shape[0]
    return Candidate("", emit, macs=int(np.prod(small.shape)) * pixels, copied=int(np.prod(view.in_shape)), nodes=2)


register_lowering(Lowering("test-slice-channels", "groupwise", frozenset({"Conv"}), propose, 20e-12,
                           "Slice of the run of read input channels + a smaller Conv"))


@register_pass
class CountNodes(Pass):
    name = "test-count-nodes"
    role = Role.CHECK
    description = "Count the nodes (a user's pass)"

    def run(self, ctx):
        return PassResult(False, 0, notes=[f"{len(ctx.model.graph.nodes)} node(s)"])
'''


def _conv_with_unread_channels(path):
    weight = randn(6, 8, 3, 3)
    weight[:, 5:] = 0.0  # input channels 5..7 are read by no output: a run that a Slice can drop
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return save(make_model(nodes, [("x", [1, 8, 6, 6])], [("y", [1, 6, 6, 6])],
                           [init("W", weight), init("B", randn(6))]), path)


def test_every_built_in_lowering_is_registered_on_import():
    code = "import json, sparsecc.lowering as l; print(json.dumps([lw.name for lw in l.lowerings()]))"
    names = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout)
    assert set(names) == BUILT_IN_LOWERINGS


def test_a_third_party_lowering_and_pass_from_a_recipe_file_through_the_cli(cli, tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "my_lowerings.py").write_text(USER_MODULE)
    recipe = folder / "slice.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: slice-channels
        imports: [my_lowerings.py]       # relative to this file
        passes:
          - plan-from-zeros
          - apply-plan
          - groupwise-rewrite: {lowering: test-slice-channels, fold: false}
          - test-count-nodes
        """))
    model = _conv_with_unread_channels(tmp_path / "m.onnx")
    result = cli("compile", model, "--recipe", recipe, "-o", tmp_path / "out", "--json", check=True)
    report = json.loads(result.stdout)
    passes = {p["name"]: p for p in report["passes"]}
    layer = passes["groupwise-rewrite"]["details"]["layers"]["conv"]
    assert layer["lowering"] == "test-slice-channels" and layer["reason"] == "forced by lowering: test-slice-channels"
    assert passes["groupwise-rewrite"]["verification"]["passed"]  # checked exact against the masked model
    assert passes["test-count-nodes"]["notes"] == ["2 node(s)"]
    assert report["recipe"]["imports"] == ["my_lowerings.py"]
    compiled = onnx.load(tmp_path / "out" / "model.onnx")
    assert [n.op_type for n in compiled.graph.node] == ["Slice", "Conv"]
    assert all(n.name.startswith("groupwise-rewrite/") for n in compiled.graph.node)
    weight = next(t for t in compiled.graph.initializer if list(t.dims) == [6, 5, 3, 3])
    assert weight is not None and report["summary"]["macs_after"] < report["summary"]["macs_before"]

    # without the import, the lowering is unknown: one clear error, exit 2, naming the way to add it
    recipe.write_text(recipe.read_text().replace("imports: [my_lowerings.py]       # relative to this file\n", ""))
    result = cli("compile", model, "--recipe", recipe, "-o", tmp_path / "out2")
    assert result.returncode == 2 and "unknown lowering 'test-slice-channels'" in result.stderr


def test_bad_imports_are_one_clear_error(cli, tmp_path):
    from sparsecc.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nimports: [missing.py]\npasses: [plan-from-zeros, apply-plan]\n")
    with pytest.raises(OptionError, match="the extension file 'missing.py' does not exist"):
        load_recipe(str(recipe)).build_passes()
    recipe.write_text("name: r\nimports: [no_such_module_anywhere]\npasses: [apply-plan]\n")
    with pytest.raises(OptionError, match="cannot import module 'no_such_module_anywhere'"):
        load_recipe(str(recipe)).build_passes()
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    recipe.write_text("name: r\nimports: [broken.py]\npasses: [apply-plan]\n")
    with pytest.raises(OptionError, match="RuntimeError: boom"):
        load_recipe(str(recipe)).build_passes()
    recipe.write_text("name: r\nimports: 5\npasses: [apply-plan]\n")
    with pytest.raises(OptionError, match="imports: is a list"):
        load_recipe(str(recipe))


def test_importance_criteria_of_ones_own_from_a_recipe(tmp_path):
    """A filter importance and a group-wise criterion are functions registered by a module a recipe imports."""
    from sparsecc.compiler import compile_model

    (tmp_path / "criteria.py").write_text(textwrap.dedent('''
        import numpy as np
        from sparsecc.sparsity.importance import register_filter_importance, register_group_criterion

        @register_filter_importance("test-max-abs")
        def max_abs(group):
            return np.max([np.abs(w).reshape(w.shape[0], -1).max(axis=1) for w in group.producers], axis=0)

        @register_group_criterion("test-max-row")
        def max_row(rows):
            return rows.max(axis=2)
        '''))
    from graphs import conv_bn_relu_fc

    model = save(conv_bn_relu_fc(batch=1), tmp_path / "m.onnx")
    recipe = tmp_path / "filters.yaml"
    recipe.write_text("name: f\nimports: [criteria.py]\npasses:\n"
                      "  - plan-filters: {metric: test-max-abs, ratio: 0.5, round_to: 1, scope: per-layer,\n"
                      "                   layers: {exclude_first_last: false}}\n"
                      "  - apply-plan\n  - remove-filters\n")
    result = compile_model(model, str(recipe), tmp_path / "out", cost_model="analytic", timing_cache="off")
    passes = {p["name"]: p for p in result.report["passes"]}
    assert passes["remove-filters"]["status"] == "ran"
    assert result.report["summary"]["macs_after"] < result.report["summary"]["macs_before"]

    from sparsecc.sparsity.groupwise import group_scores

    weight = np.array([[1.0, -3.0], [0.0, 0.0], [2.0, 0.5]], np.float32)  # W[K=3, N=2]: 3 groups
    np.testing.assert_allclose(group_scores(weight, "gemm", criterion="test-max-row"), [[3.0, 0.0, 2.0]])
    with pytest.raises(OptionError, match="unknown group-wise criterion"):
        group_scores(weight, "gemm", criterion="test-nope")


def test_an_installed_packages_entry_point_is_imported(monkeypatch, tmp_path):
    import importlib.metadata

    import sparsecc.extensions as extensions
    from sparsecc.passmanager import available_passes

    (tmp_path / "sparsecc_test_entry_ext.py").write_text(textwrap.dedent('''
        from sparsecc.passmanager import Pass, PassResult, Role, register_pass

        @register_pass
        class FromEntryPoint(Pass):
            name = "test-from-entry-point"
            role = Role.CHECK

            def run(self, ctx):
                return PassResult(False)
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("test", "sparsecc_test_entry_ext", extensions.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [entry] if group == extensions.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(extensions, "_installed_loaded", False)
    assert "test-from-entry-point" in available_passes()
