"""Structural checks of compile's memory behaviour (not timed): copies kept only to be compared
against do not hold weights in memory twice, and models are timed and checked without serialised
copies of their weights or two whole-model sessions at once."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
from graphs import init, make_model, randn, save
from onnx import helper

import sparsecc
from sparsecc.model import Model, load_model
from sparsecc.onnx_files import INLINE_THRESHOLD
from sparsecc.session_files import SessionFiles, release_to_files


def chain(tmp_path, channels: int = 32, name: str = "chain.onnx"):
    """x -> 4 x (Conv 3x3 pad 1 -> Relu) -> y, 8x8 images; every weight above the inline threshold."""
    nodes, inits, source = [], [], "x"
    shapes = [(channels, 4), (channels, channels), (channels, channels), (4, channels)]
    for i, (c_out, c_in) in enumerate(shapes):
        inits.append(init(f"W{i}", randn(c_out, c_in, 3, 3, scale=0.3)))
        nodes.append(helper.make_node("Conv", [source, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        source = f"r{i}"
    return save(make_model(nodes, [("x", [1, 4, 8, 8])], [(source, [1, 4, 8, 8])], inits), tmp_path / name)


def large_arrays(model: Model) -> dict[str, np.ndarray]:
    return {name: t.values for name, t in model.graph.tensors().items()
            if hasattr(t, "values") and isinstance(getattr(t, "_values", None), np.ndarray)
            and t.values.nbytes > INLINE_THRESHOLD}


def test_the_originals_kept_for_the_final_check_hold_no_copy_of_the_weights(tmp_path, monkeypatch):
    import sparsecc.compiler as compiler

    seen = {}
    real = compiler._final_verification

    def capture(original, ctx, *args, **kwargs):
        seen.update(original=original, masked=ctx.masked, model=ctx.model)
        return real(original, ctx, *args, **kwargs)

    monkeypatch.setattr(compiler, "_final_verification", capture)
    sparsecc.compile_model(chain(tmp_path), "groupwise-50", tmp_path / "out", cost_model="analytic")
    model = large_arrays(seen["model"])
    assert seen["masked"] is not None
    for copy in ("original", "masked"):
        arrays = large_arrays(seen[copy])
        assert arrays
        for name, array in arrays.items():
            # either the working model's own array (shared, not copied) or mapped from a file
            assert array is model.get(name) or isinstance(array, np.memmap), (copy, name)
    # the pruned weights the model replaced are mapped from the file verification wrote, not kept
    masked = large_arrays(seen["masked"])
    assert any(isinstance(a, np.memmap) for a in masked.values())


def test_released_arrays_are_mapped_from_their_file_and_linked_not_written(tmp_path):
    model = load_model(chain(tmp_path))
    kept = model.copy()
    before = {name: np.array(a) for name, a in large_arrays(model).items()}
    kept.graph.tensors()["W0"].values = kept.graph.tensors()["W0"].values * 2  # only in the copy
    replaced = release_to_files(model.graph, keep=(kept.graph,))
    arrays = large_arrays(model)
    assert replaced == len(arrays) - 3  # W1..W3 are still used by `kept`: left as they are
    assert isinstance(arrays["W0"], np.memmap) and not arrays["W0"].flags.writeable
    assert all(arrays[n] is kept.graph.tensors()[n].values for n in ("W1", "W2", "W3"))
    for name, values in before.items():
        np.testing.assert_array_equal(arrays[name], values)
    with SessionFiles() as files:
        files.write(model.graph)
        assert (files._dir / "weights.data").stat().st_size == 0  # every weight linked from the input
        mapped = files.initializers(next(files._dir.glob("model*.onnx")))
        assert dict(mapped)["W0"] is arrays["W0"]


def test_arrays_a_session_file_wrote_can_be_released_to_it(tmp_path):
    model = load_model(chain(tmp_path))
    weight = model.graph.tensors()["W1"]
    weight.values = weight.values + 1  # a pass's new array: in no file yet
    assert release_to_files(model.graph) == 3  # W1 has nowhere to be read from
    with SessionFiles() as files:
        files.write(model.graph)  # writes W1 to the shared data file
        size = (files._dir / "weights.data").stat().st_size
        copy = model.copy()
        assert release_to_files(copy.graph) == 1
        mapped = copy.graph.tensors()["W1"].values
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(mapped, weight.values)
        files.write(copy.graph)  # referenced again, not written again
        assert (files._dir / "weights.data").stat().st_size == size


def test_the_whole_model_check_times_one_session_at_a_time_from_the_graphs_arrays(tmp_path, monkeypatch):
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.lowering import TimingCache, whole_model_check

    dense = load_model(chain(tmp_path))
    rewritten = dense.copy()
    rewritten.graph.tensors()["W2"].values = rewritten.graph.tensors()["W2"].values * 0.5
    release_to_files(dense.graph)  # as the groupwise pass keeps its copy: mapped from files
    loads, alive, most = [], weakref.WeakSet(), [0]
    real = OrtBackend.load

    def load(self, model, initializers=None):
        session = real(self, model, initializers)
        alive.add(session)
        most[0] = max(most[0], len(alive))
        loads.append(dict(initializers or []))
        return session

    def no_bytes(self):
        raise AssertionError("the whole model was serialised")

    monkeypatch.setattr(OrtBackend, "load", load)
    monkeypatch.setattr(Model, "to_bytes", no_bytes)
    check = whole_model_check(dense, rewritten, runs=2, threads=1, cache=TimingCache(None))
    # dense, rewritten, dense (a margin inside the spread measures once more, the same way)
    assert check["runs"] in (2, 4) and len(loads) in (3, 6)
    assert most[0] == 1  # never two whole-model sessions alive at once
    ours = large_arrays(rewritten)
    dense_given, rewritten_given = loads[0], loads[1]
    assert set(dense_given) == set(rewritten_given) == set(ours)
    assert all(rewritten_given[n] is ours[n] for n in ours)  # ONNX Runtime takes the arrays, no copy
    # weights both models hold are given once from memory; only the changed one is read from its file
    assert all(dense_given[n] is ours[n] for n in ("W0", "W1", "W3"))
    assert isinstance(dense_given["W2"], np.memmap)


def test_the_measured_cost_model_loads_layers_without_serialising_them(tmp_path, monkeypatch):
    def no_bytes(self):
        raise AssertionError("a model was serialised")

    monkeypatch.setattr(Model, "to_bytes", no_bytes)
    result = sparsecc.compile_model(chain(tmp_path), "groupwise-50", tmp_path / "out", cost_model="measured")
    rewrite = next(r for r in result.report["passes"] if r["name"] == "groupwise-rewrite")
    timed = [layer for layer in rewrite["details"]["layers"].values() if layer.get("candidates_ms")]
    assert timed  # layers were timed, each from a file with external data


def test_inspect_does_not_keep_replaced_weights_alive(tmp_path):
    from sparsecc.inspection import inspect_model

    model = load_model(chain(tmp_path))
    cache: dict = {}
    inspect_model(model, cache)
    tensor = model.graph.tensors()["W1"]
    gone = weakref.ref(tensor.values)
    tensor.values = tensor.values * 2
    del model, tensor
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("kind, shape, group, trans_b", [("conv", (8, 6, 3, 3), 1, False),
                                                          ("grouped", (12, 3, 3, 3), 4, False),
                                                          ("gemm", (40, 70), 1, True),
                                                          ("matmul", (70, 40), 1, False)])
@pytest.mark.parametrize("criterion", ["l1", "l2", "mean", "zeros"])
@pytest.mark.parametrize("rows_at_once", [2, 3, 4])
def test_group_scores_in_slices_equal_the_whole_array_computation(monkeypatch, kind, shape, group, trans_b,
                                                                  criterion, rows_at_once):
    from sparsecc.sparsity import groupwise

    weight = randn(*shape)
    weight[..., 0] = 0  # a few zero groups for "zeros"
    whole = np.abs(groupwise.group_rows(weight, kind, group, trans_b).astype(np.float64))
    reference = {"zeros": lambda r: np.any(r != 0, axis=2).astype(np.float64),
                 "l2": lambda r: np.sqrt(np.sum(r * r, axis=2)),
                 "mean": lambda r: r.mean(axis=2), "l1": lambda r: r.sum(axis=2)}[criterion](whole)
    # a few rows at a time (70 rows in 3s leave one over: it joins the slice before it)
    monkeypatch.setattr(groupwise, "SCORE_CHUNK_ELEMENTS", rows_at_once * whole.shape[0] * whole.shape[2])
    scores = groupwise.group_scores(weight, kind, group, criterion, trans_b)
    assert scores.shape == reference.shape
    np.testing.assert_array_equal(scores, reference)  # bit for bit: the same sums in the same order


def test_loading_checks_the_graph_without_parsing_the_weights_again(tmp_path, monkeypatch):
    checked = []
    real = onnx.checker.check_model

    def check(model, *args, **kwargs):
        checked.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", check)
    model = load_model(chain(tmp_path))
    assert len(checked) == 1 and isinstance(checked[0], onnx.ModelProto)  # not the file, parsed whole
    assert not checked[0].graph.initializer  # the weights were declared as inputs, not copied
    assert large_arrays(model)["W1"].shape == (32, 32, 3, 3)


def test_a_weight_whose_bytes_do_not_fit_its_shape_is_refused(tmp_path):
    from onnx import numpy_helper

    from sparsecc.errors import ModelLoadError

    weight = numpy_helper.from_array(np.ones((40, 40), np.float32), "W")
    weight.raw_data = weight.raw_data[:-400]  # 100 floats short
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 40])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 40])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "short.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="holds 6000 bytes, but its shape"):
        load_model(path)


def test_verification_sessions_run_from_the_graphs_arrays(tmp_path, monkeypatch):
    import sparsecc.verify as verify

    given = []
    real = verify.verification_session

    def session(source, initializers=None):
        given.append(dict(initializers or []))
        return real(source, initializers)

    monkeypatch.setattr(verify, "verification_session", session)
    model = load_model(chain(tmp_path))
    arrays = large_arrays(model)
    copy = model.copy()
    release_to_files(copy.graph)  # as the pass manager keeps its "before": mapped from the file
    with SessionFiles() as files:
        changed = model.copy()
        changed.graph.tensors()["W1"].values = changed.graph.tensors()["W1"].values * 1.0
        verify.compare_models(files.write(copy.graph), files.write(changed.graph), verify.input_specs(model),
                              verify.VerifyConfig(), "onnxruntime", files=files)
    assert len(given) == 2 and all(set(g) == set(arrays) for g in given)
    # the mapped copy runs from the in-memory arrays of the same bytes: no page of the file read again
    assert all(given[0][n] is arrays[n] for n in arrays)
    assert given[1]["W1"] is changed.graph.tensors()["W1"].values
