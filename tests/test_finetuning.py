"""sparsecc.finetuning: ONNX-side plans applied to PyTorch models, kept through fine-tuning, exported,
and found again by ``compile --recipe zeros``. The models here are written in this file,
independently of ``models/``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("sparsecc.finetuning")

from sparsecc.data import Split  # noqa: E402
from sparsecc.errors import OptionError, PlanError, ShapeError  # noqa: E402
from sparsecc.plan import SparsityPlan, WeightPlan  # noqa: E402

torch.set_num_threads(1)


class Tiny(torch.nn.Module):
    """conv-bn-relu x3 with a residual Add between the last two, pool, linear."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU())
        self.body = torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, width, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(width))
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = torch.relu(self.mid(x))
        return self.head(x.mean(dim=(2, 3)))


def _split(n_train: int = 512, n_test: int = 64, size: int = 12) -> Split:
    """Random but learnable: the class is which quadrant holds the bright blob."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 4, n)
        x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, 0, r * size // 2:(r + 1) * size // 2, q * size // 2:(q + 1) * size // 2] += 1.5
        return x, y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return Split("quadrants", x_train, y_train, x_test, y_test, classes=4)


def _model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(classes=4).eval()


EXAMPLE = torch.zeros(1, 1, 12, 12)


def test_plan_is_the_one_compile_makes_and_maps_to_parameters_by_name(tmp_path):
    from sparsecc.compiler import compile_model

    model = _model()
    plan = st.plan_for_module(model, "groupwise-50", EXAMPLE)
    # the same export, compiled with the same recipe, plans the same masks (one implementation)
    path = st.export_pruned_onnx(model, tmp_path / "m.onnx", EXAMPLE, dynamic_batch=False)
    compiled = compile_model(path, "groupwise-50", tmp_path / "out")
    reference = SparsityPlan.load(compiled.out_dir / "plan.json")
    assert set(plan.entries) == set(reference.entries) == {"body.0.weight", "body.3.weight", "mid.weight"}
    for name, entry in plan.entries.items():
        np.testing.assert_array_equal(entry.mask, reference.entries[name].mask)
    masks = st.masks_for_module(plan, model)
    params = dict(model.named_parameters())
    assert {n: tuple(m.shape) for n, m in masks.items()} == {n: tuple(params[n].shape) for n in masks}
    assert all(abs(float(m.float().mean()) - 0.5) < 0.01 for m in masks.values())


def test_a_plan_weight_that_is_no_parameter_is_a_clear_error():
    plan = SparsityPlan()
    plan.add(WeightPlan("onnx::Conv_123", "/body/Conv", "group-wise", np.ones((16, 16, 3, 3), bool)))
    with pytest.raises(PlanError, match="'onnx::Conv_123' .* is not a parameter of the model") as err:
        st.masks_for_module(plan, _model())
    assert "dynamo=False" in err.value.fix
    bad_shape = SparsityPlan()
    bad_shape.add(WeightPlan("body.0.weight", "/body/Conv", "group-wise", np.ones((8, 16, 3, 3), bool)))
    with pytest.raises(PlanError, match=r"has shape \[8, 16, 3, 3\] but the parameter has shape \[16, 16, 3, 3\]"):
        st.masks_for_module(bad_shape, _model())


def test_linear_mask_stored_as_matmul_kn_is_transposed_back():
    plan = SparsityPlan()
    mask = np.ones((16, 4), bool)
    mask[3] = False  # input feature 3 of W[K, N]
    plan.add(WeightPlan("head.weight", "/head/MatMul", "group-wise", mask))
    masks = st.masks_for_module(plan, _model())
    assert tuple(masks["head.weight"].shape) == (4, 16) and not masks["head.weight"][:, 3].any()


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)], ids=["sgd-momentum", "adamw"])
def test_masked_weights_and_their_optimizer_state_stay_zero(make_optimizer):
    model = _model().train()
    masks = st.masks_for_module(st.plan_for_module(model, "groupwise-50", EXAMPLE), model)
    optimizer = make_optimizer(model.parameters())
    st.MaskKeeper(model, masks, optimizer)
    split = _split()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(split.x_train[:32])),
                                                 torch.from_numpy(split.y_train[:32]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert float(params[name].detach()[~mask].abs().max()) == 0.0
        assert float(params[name].detach()[mask].abs().min()) > 0.0  # the kept ones did train
        state = [v for v in optimizer.state[params[name]].values() if torch.is_tensor(v) and v.shape == mask.shape]
        assert state and all(float(v[~mask].abs().max()) == 0.0 for v in state)
    st.check_masks(model, masks)  # nothing to report


def test_a_masked_weight_that_became_non_zero_is_reported_before_export(tmp_path):
    model = _model()
    masks = st.masks_for_module(st.plan_for_module(model, "groupwise-50", EXAMPLE), model)
    st.MaskKeeper(model, masks)
    with torch.no_grad():
        model.body[3].weight[~masks["body.3.weight"]] += 0.5  # e.g. an optimizer step without the keeper
    with pytest.raises(PlanError, match=r"body\.3\.weight: \d+ of \d+ pruned weights non-zero") as err:
        st.export_pruned_onnx(model, tmp_path / "m.onnx", EXAMPLE, masks=masks)
    assert "body.0.weight" not in err.value.what and "MaskKeeper" in err.value.fix
    assert not (tmp_path / "m.onnx").exists()


def test_filter_plan_uses_the_coupled_channel_groups():
    model = _model()
    plan = st.plan_for_module(model, _recipe("plan-filters: {ratio: 0.5, round_to: 4, scope: per-layer}"), EXAMPLE)
    masks = st.masks_for_module(plan, model)

    def dead(mask, axis):  # channels along axis whose every weight is masked
        moved = mask.movedim(axis, 0).reshape(mask.shape[axis], -1)
        return set(np.flatnonzero(~moved.any(dim=1).numpy()).tolist())

    # body.0 and mid make free groups; the residual Add couples stem.0 and body.3, and stem.0 is the
    # first layer (not selected), so that group keeps its channels
    assert len(dead(masks["body.0.weight"], 0)) == 8 and len(dead(masks["mid.weight"], 0)) == 8
    assert "stem.0.weight" not in masks and dead(masks["body.3.weight"], 0) == set()
    # each consumer loses exactly the input channels its producer lost
    assert dead(masks["body.3.weight"], 1) == dead(masks["body.0.weight"], 0)
    assert dead(masks["head.weight"], 1) == dead(masks["mid.weight"], 0)


def _recipe(plan_line: str, name: str = "test-recipe"):
    from sparsecc.recipe import parse_recipe

    return parse_recipe(f"name: {name}\npasses:\n  - {plan_line}\n  - apply-plan\n", "test.yaml")


def test_recipes_the_torch_side_cannot_stage_are_refused():
    with pytest.raises(OptionError, match="plans again .* after a rewrite"):
        st.planning_passes("hybrid-24")
    with pytest.raises(OptionError, match="plans no pruning"):
        st.planning_passes("none")
    with pytest.raises(OptionError, match="gradual schedule cannot ramp 2:4"):
        st.planning_passes(_recipe("plan-24"), fraction=0.5)
    assert st.planning_passes("groupwise-50", 0.5) == [("plan-groupwise", {"keep": 0.75, "criterion": "l1"})]
    assert st.planning_passes("filter-l1", 0.5)[0][1]["ratio"] == pytest.approx(0.2)


def test_gradual_schedule_ramps_cubically_and_masks_only_grow():
    assert st.gradual_fractions(3) == pytest.approx([0.875, 1.0, 1.0])
    fractions = st.gradual_fractions(6)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 1.0
    model = _model()
    result = st.finetune(model, _split(), "groupwise-50", epochs=3, schedule="gradual", batch_size=32,
                         log=lambda m: None)
    pruned = [h["pruned"] for h in result.history]
    assert pruned == sorted(pruned) and pruned[0] < 0.5 and pruned[-1] == pytest.approx(0.5, abs=0.01)


def test_finetune_rejects_a_model_that_cannot_take_the_data():
    split = _split()
    wide = Split("rgb", np.zeros((4, 3, 12, 12), np.float32), split.y_train[:4],
                 np.zeros((4, 3, 12, 12), np.float32), split.y_test[:4])
    with pytest.raises(ShapeError, match="cannot take data set 'rgb' inputs"):
        st.finetune(_model(), wide, "groupwise-50", epochs=0)
    with pytest.raises(OptionError, match="either a recipe or a plan"):
        st.finetune(_model(), split, epochs=0)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_finetuned_export_compiles_in_zero_detect_mode(tmp_path, dynamo):
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.compiler import compile_model

    split = _split()
    result = st.finetune(_model(), split, "groupwise-50", epochs=4, lr=1e-2, batch_size=32, augment=False,
                         log=lambda m: None)
    assert result.top1 >= 0.9 and result.n == len(split.y_test)  # a learnable task, learnt
    path = st.export_pruned_onnx(result.module, tmp_path / "ft.onnx", EXAMPLE, masks=result.masks, dynamo=dynamo)
    out = compile_model(path, "zeros", tmp_path / "out", shapes={"input": (1, 1, 12, 12)})
    plan = json.loads((out.out_dir / "plan.json").read_text())
    found = {w["weight"]: (w["pattern"], w["kept_fraction"]) for w in plan["weights"]}
    # the exporters name weights differently after folding; the structure is what must be found
    assert sorted(found.values()) == [("group-wise", 0.5)] * 3
    assert out.report["verification"]["exact"]["passed"]
    # the exported ONNX scores what the torch model scores
    session = OrtBackend().load(path)
    logits = np.concatenate([next(iter(session.run({"input": split.x_test[i:i + 1]}).values()))
                             for i in range(len(split.x_test))])
    assert float((logits.argmax(1) == split.y_test).mean()) == pytest.approx(result.top1, abs=1e-9)


@pytest.mark.slow
def test_finetune_runs_unchanged_under_torchrun_with_ddp(tmp_path):
    """Two CPU processes (gloo) hold the same masks as one process and reach a matching accuracy."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    subprocess.run([sys.executable, str(worker), str(tmp_path / "single")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(worker), str(tmp_path / "ddp")], check=True, env=env, timeout=300,
                   capture_output=True)
    single = json.loads((tmp_path / "single" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    assert ranks[0]["rank_digests"] == [single["digest"]] * 2 == [r["digest"] for r in ranks]
    # the global batch is the same, split over two ranks: the runs differ only by float rounding
    assert abs(ranks[0]["top1"] - single["top1"]) <= 2 / single["n"]
    assert ranks[0]["top1"] == ranks[1]["top1"]


def test_weights_load_from_an_onnx_export_by_name_and_a_mismatch_is_a_clear_error(tmp_path):
    from sparsecc.errors import ModelLoadError

    source = _model(seed=1)
    path = st.export_pruned_onnx(source, tmp_path / "m.onnx", EXAMPLE)
    target = _model(seed=2)
    assert st.load_onnx_weights(target, path) == len([k for k in target.state_dict() if "num_batches" not in k])
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ModelLoadError, match=r"tensor 'stem.0.weight' has shape \[16, 1, 3, 3\] in the file"):
        st.load_onnx_weights(Tiny(width=8, classes=4), path)


def test_a_plan_made_elsewhere_and_saved_is_applied_as_is(tmp_path):
    plan = st.plan_for_module(_model(), _recipe("plan-filters: {ratio: 0.5, round_to: 4}"), EXAMPLE)
    plan.save(tmp_path / "plan.json")
    loaded = SparsityPlan.load(tmp_path / "plan.json")
    result = st.finetune(_model(), _split(n_train=64), plan=loaded, epochs=1, batch_size=32, log=lambda m: None)
    assert set(result.masks) == set(plan.entries)
    for name, mask in result.masks.items():
        np.testing.assert_array_equal(mask.numpy(), plan.entries[name].mask)
    with pytest.raises(OptionError, match="gradual schedule re-plans"):
        st.finetune(_model(), _split(), plan=loaded, epochs=1, schedule="gradual")


class TinySeparable(torch.nn.Module):
    """Stem, then two inverted-residual blocks (PW1-BN-ReLU6, DW 3x3-BN-ReLU6, PW2-BN), the second
    with a residual Add; pool, linear. Written here, apart from models/."""

    def __init__(self, classes: int = 4):
        super().__init__()

        def block(c_in, hidden, c_out):
            return torch.nn.Sequential(
                torch.nn.Conv2d(c_in, hidden, 1, bias=False), torch.nn.BatchNorm2d(hidden), torch.nn.ReLU6(),
                torch.nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                torch.nn.BatchNorm2d(hidden), torch.nn.ReLU6(),
                torch.nn.Conv2d(hidden, c_out, 1, bias=False), torch.nn.BatchNorm2d(c_out))

        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU6())
        self.first = block(16, 32, 16)
        self.second = block(16, 32, 16)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, x):
        x = self.first(self.stem(x))
        x = x + self.second(x)
        return self.head(x.mean(dim=(2, 3)))


def _deprune_recipe(method: str, dw_ratio: float = 0.6, pw_ratio: float = 0.5):
    return _recipe(f"plan-deprune: {{method: {method}, dw_ratio: {dw_ratio}, pw_ratio: {pw_ratio}}}",
                   name=f"deprune-{method}")


def test_deprune_plan_is_the_one_compile_makes_and_maps_to_depthwise_and_pw2_parameters(tmp_path):
    from sparsecc.compiler import compile_model

    torch.manual_seed(0)
    model = TinySeparable().eval()
    plan = st.plan_for_module(model, "deprune-b", EXAMPLE)
    path = st.export_pruned_onnx(model, tmp_path / "m.onnx", EXAMPLE, dynamic_batch=False)
    compiled = compile_model(path, "deprune-b", tmp_path / "out")
    reference = SparsityPlan.load(compiled.out_dir / "plan.json")
    assert set(plan.entries) == set(reference.entries)
    for name, entry in plan.entries.items():
        np.testing.assert_array_equal(entry.mask, reference.entries[name].mask)
    masks = st.masks_for_module(plan, model)
    for dw in ("first.3.weight", "second.3.weight"):  # depthwise taps, [32, 1, 3, 3]: 80% pruned, balanced
        assert plan.entries[dw].pattern == "depthwise-taps" and masks[dw].shape == (32, 1, 3, 3)
        assert float((~masks[dw]).float().mean()) == pytest.approx(0.8, abs=0.01)
    # PW2 filters of the residual stream: one coupled group (both PW2s, the next PW1's columns), half removed
    for pw2 in ("first.6.weight", "second.6.weight"):
        kept_filters = masks[pw2].reshape(16, -1).any(dim=1)
        assert int(kept_filters.sum()) == 8
    np.testing.assert_array_equal(masks["first.6.weight"].reshape(16, -1).any(dim=1),
                                  masks["second.6.weight"].reshape(16, -1).any(dim=1))
    assert ("plan-deprune", {"method": "bwt", "dw_ratio": 0.4, "pw_ratio": 0.25}) == \
        st.planning_passes("deprune-b", 0.5)[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_deprune_finetuned_export_is_found_again_by_deprune_zeros(tmp_path, dynamo):
    """DEPrune masks kept through fine-tuning; in detect mode deprune-zeros finds all three structures:
    depthwise tap zeros, depthwise channels left with no tap, PW2 filters (with their coupled channels)."""
    from sparsecc.compiler import compile_model

    split = _split()
    torch.manual_seed(0)
    result = st.finetune(TinySeparable().eval(), split, _deprune_recipe("dcp", dw_ratio=0.85), epochs=3, lr=1e-2,
                         batch_size=32, augment=False, log=lambda m: None)
    assert result.top1 >= 0.9  # learnt through the masks
    dead = sum(int((~result.masks[w].reshape(32, -1).any(dim=1)).sum()) for w in ("first.3.weight", "second.3.weight"))
    assert dead > 0  # DCP ranks the whole layer, so some channels lose every tap
    for name, mask in result.masks.items():  # still exactly the plan's masks after training
        assert not result.module.get_parameter(name).detach()[~mask].any()
    path = st.export_pruned_onnx(result.module, tmp_path / "ft.onnx", EXAMPLE, masks=result.masks, dynamo=dynamo)
    out = compile_model(path, "deprune-zeros", tmp_path / "out", shapes={"input": (1, 1, 12, 12)})
    passes = {p["name"]: p for p in out.report["passes"]}
    assert "8 of 16 channels removed in 1 group(s)" in " ".join(passes["remove-filters"]["notes"])
    notes = " ".join(passes["deprune-dead-channels"]["notes"])
    assert "dead depthwise channel(s) removed" in notes and not notes.startswith("0 ")
    # removed work is never undone by deprune-model-check's timing, which only reports
    assert passes["deprune-model-check"]["details"]["kept"] and passes["deprune-model-check"]["rewrites"] == 0
    assert out.report["verification"]["exact"]["passed"]


def test_the_former_module_name_still_imports_the_fine_tuning_api():
    import sparsecc.torch as former

    assert former.MaskKeeper is st.MaskKeeper and former.plan_for_module is st.plan_for_module
    assert former.export_onnx is st.export_pruned_onnx and "export_onnx" in former.__all__


def test_a_speed_target_the_model_already_meets_plans_nothing_for_fine_tuning():
    """Nothing to prune is the answer here, not an error; the report says why."""
    report: dict = {}
    plan = st.plan_for_module(_model(), _recipe("plan-filters: {target_speedup: 1.001, timer: analytic}"), EXAMPLE,
                              report=report)
    assert not len(plan)
    assert report["already_met"] and report["summary"].endswith("nothing removed")
    with pytest.raises(PlanError, match="planned no weight"):  # an empty plan for any other reason is still refused
        st.plan_for_module(_model(), _recipe("plan-filters: {ratio: 0.5, layers: {names: [/stem/stem.0/Conv]}}"), EXAMPLE)


def test_a_later_schedule_step_may_mask_parameters_the_first_did_not():
    model = _model()
    keeper = st.MaskKeeper(model, {})  # e.g. a first step that had nothing to prune
    mask = torch.ones_like(model.mid.weight, dtype=torch.bool)
    mask[:4] = False
    keeper.update({"mid.weight": mask})
    assert float(model.mid.weight.detach()[:4].abs().max()) == 0.0 and keeper.sparsity() == 0.25
    with pytest.raises(PlanError, match="not a parameter of the module"):
        keeper.update({"no.such.weight": mask})
