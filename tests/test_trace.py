"""Tracers and exporters on every layer: torch.fx (and torchvision's feature extractor),
torch.jit.script and torch.jit.trace, torch.export, and both ONNX exporters, against eager
PyTorch; their graphs hold plain PyTorch operators only, never augmentbn's compiled ones."""

import copy
import io
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import augmentbn as ab

LAYERS = (
    ab.AugmentBatchNorm1d,
    ab.AugmentBatchNorm2d,
    ab.AugmentBatchNorm3d,
    ab.IEBatchNorm1d,
    ab.IEBatchNorm2d,
    ab.IEBatchNorm3d,
)


class EveryLayer(nn.Module):
    """A small network through every layer: 2d on images, 1d on ``(N, C, L)`` and on ``(N, C)``,
    3d on ``(N, C, 1, H, W)``. ``nabn`` kwargs reach the NABN layers."""

    def __init__(self, channels=4, **nabn):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.nabn2d = ab.AugmentBatchNorm2d(channels, **nabn)
        self.iebn2d = ab.IEBatchNorm2d(channels)
        self.nabn1d = ab.AugmentBatchNorm1d(channels, **nabn)
        self.iebn1d = ab.IEBatchNorm1d(channels)
        self.nabn3d = ab.AugmentBatchNorm3d(channels, **nabn)
        self.iebn3d = ab.IEBatchNorm3d(channels)
        self.iebn_flat = ab.IEBatchNorm1d(channels)
        self.nabn_flat = ab.AugmentBatchNorm1d(channels, **nabn)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        x = torch.relu(self.iebn2d(self.nabn2d(self.conv(x))))
        x = self.iebn1d(self.nabn1d(x.flatten(2))).reshape(x.shape)
        x = self.iebn3d(self.nabn3d(x.unsqueeze(2))).squeeze(2)
        x = self.nabn_flat(self.iebn_flat(x.mean(dim=(2, 3))))
        return self.fc(x)


def _trained(model, seed=0):
    """Running statistics, affine and gate parameters away from their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ab.layers.BatchNormBase):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                if hasattr(m, "weight_readjust"):
                    m.weight_readjust.copy_(torch.randn(c, generator=g))
                    m.bias_readjust.copy_(torch.randn(c, generator=g))
    return model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return _trained(EveryLayer()).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 6, 6, generator=g), torch.randn(5, 3, 6, 6, generator=g)


def test_the_network_covers_every_layer(model):
    assert {type(m) for m in model.modules()} >= set(LAYERS)


def _assert_plain_operators(operators):
    """No operator of augmentbn's (``torch.ops.augmentbn``, ``augmentbn::``, an ONNX domain)."""
    assert operators
    ours = [op for op in operators if "augmentbn" in op]
    assert not ours, f"the graph calls augmentbn's compiled operators: {ours}"


def _fx_operators(graph):
    return [str(node.target) for node in graph.nodes]


def _jit_operators(module):
    return [node.kind() for node in module.inlined_graph.nodes()]


def _jit_or_skip(make):
    """torch.jit is deprecated in torch 2.14: skip where this torch no longer supports it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return make()
    except (NotImplementedError, AttributeError) as error:  # pragma: no cover
        pytest.skip(f"torch.jit is not supported by this torch ({error})")


def _exported(tool, model, example):
    """Run ``tool`` on ``model``; return a function of a batch and the graph's text."""
    if tool in ("fx", "feature_extractor"):
        if tool == "fx":
            graph = torch.fx.symbolic_trace(model)
            run = graph
        else:
            fe = pytest.importorskip("torchvision.models.feature_extraction")
            graph = fe.create_feature_extractor(model, {"fc": "out"})

            def run(x):
                return graph(x)["out"]

        # the graph reads the model's own buffers, not constants baked in while tracing
        assert set(graph.state_dict()) <= set(model.state_dict())
        return run, _fx_operators(graph.graph)
    if tool == "jit.script":
        scripted = _jit_or_skip(lambda: torch.jit.script(model))
        return _saved_and_loaded(scripted), _jit_operators(scripted)
    if tool == "jit.trace":
        traced = _jit_or_skip(lambda: torch.jit.trace(model, example))
        return _saved_and_loaded(traced), _jit_operators(traced)
    if tool == "export":
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
        )
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        buffer.seek(0)
        return torch.export.load(buffer).module(), _fx_operators(program.graph)
    return _onnx(tool, model, example)


def _saved_and_loaded(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _onnx(tool, model, example):
    pytest.importorskip("onnxscript", reason='ONNX export needs pip install "augmentbn[export]"')
    ort = pytest.importorskip("onnxruntime", reason='pip install "augmentbn[export]"')
    onnx = pytest.importorskip("onnx")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if tool == "onnx.dynamo":
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
            proto = program.model_proto
        else:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
            proto = onnx.load_from_string(buffer.getvalue())
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    operators = [f"{n.domain}::{n.op_type}" for n in proto.graph.node]
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    return run, operators


TOOLS = ["fx", "feature_extractor", "jit.script", "jit.trace", "export", "onnx.dynamo"]
TOOLS += ["onnx.legacy"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_matches_eager_evaluation(tool, model):
    example, other = _inputs()
    expected = {x.shape[0]: model(x) for x in (example, other)}
    run, operators = _exported(tool, model, example)
    _assert_plain_operators(operators)
    for x in (example, other):  # the batch axis stays dynamic
        torch.testing.assert_close(run(x), expected[x.shape[0]], rtol=1e-5, atol=1e-5)
    assert all(m.num_batches_tracked.item() == 0 for m in model.modules() if hasattr(m, "eps"))


def test_saved_graphs_run_in_a_process_without_augmentbn(model, tmp_path):
    example, other = _inputs()
    traced = _jit_or_skip(lambda: torch.jit.trace(model, example))
    scripted = _jit_or_skip(lambda: torch.jit.script(model))
    torch.jit.save(traced, tmp_path / "traced.pt")
    torch.jit.save(scripted, tmp_path / "scripted.pt")
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    torch.export.save(program, tmp_path / "model.pt2")
    torch.save({"x": other, "y": model(other).detach()}, tmp_path / "io.pt")
    script = f"""
import sys, warnings, torch
warnings.simplefilter("ignore")
sys.modules["augmentbn"] = None  # importing augmentbn fails in this process
data = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
for module in (torch.jit.load({str(tmp_path / "traced.pt")!r}),
               torch.jit.load({str(tmp_path / "scripted.pt")!r}),
               torch.export.load({str(tmp_path / "model.pt2")!r}).module()):
    torch.testing.assert_close(module(data["x"]), data["y"], rtol=1e-5, atol=1e-5)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _train_step(module, x):
    x = x.clone().requires_grad_()
    out = module(x)
    if isinstance(out, dict):
        out = out["out"]
    out.square().sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("tool", ["fx", "feature_extractor", "jit.trace", "export"])
@pytest.mark.parametrize(
    "nabn",
    [
        {"noise": "gaussian_clip"},
        {"noise": "gaussian_reject", "theta": 0.5},
        {"noise": "uniform", "momentum": None, "running_stats": "clean"},
    ],
    ids=["clip", "reject", "uniform-cumulative-clean"],
)
def test_training_mode_records_the_same_steps(tool, nabn):
    """Outputs, input gradients, running statistics and batch counts of three training steps
    equal eager PyTorch's, the noise drawn from the same global RNG state (in float64: with 3
    values per channel, gaussian_reject's variance can be small enough for float32 to lose
    digits to cancellation)."""
    torch.manual_seed(0)
    eager = _trained(EveryLayer(**nabn)).double().train()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    traced = copy.deepcopy(eager)
    if tool == "fx":
        recorded = torch.fx.symbolic_trace(traced)
    elif tool == "feature_extractor":
        fe = pytest.importorskip("torchvision.models.feature_extraction")
        recorded = fe.create_feature_extractor(traced, {"fc": "out"})
    elif tool == "jit.trace":
        recorded = _jit_or_skip(lambda: torch.jit.trace(traced, x, check_trace=False))
    else:
        recorded = torch.export.export(traced, (x,)).module()
    recorded.load_state_dict(eager.state_dict())  # undo what tracing ran
    for step in range(3):
        torch.manual_seed(step)
        expected, expected_grad = _train_step(eager, x)
        torch.manual_seed(step)
        actual, grad = _train_step(recorded, x)
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-9)
    state = recorded.state_dict()
    for name, value in eager.state_dict().items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(state[name], value, rtol=1e-9, atol=1e-12)
    assert eager.nabn2d.num_batches_tracked.item() == 3


@pytest.mark.parametrize("tool", ["fx", "jit.trace", "export"])
def test_recorded_training_draws_from_the_layers_generator(tool):
    generator = torch.Generator().manual_seed(0)
    eager = nn.Sequential(ab.AugmentBatchNorm2d(4, theta=1.0, generator=generator)).train()
    x = torch.randn(3, 4, 5, 5)
    if tool == "fx":
        recorded = torch.fx.symbolic_trace(eager)
    elif tool == "jit.trace":
        recorded = _jit_or_skip(lambda: torch.jit.trace(eager, x, check_trace=False))
    else:
        recorded = torch.export.export(eager, (x,)).module()
    outputs = []
    for module, global_seed in ((eager, 1), (recorded, 2), (recorded, 3)):
        generator.manual_seed(5)
        torch.manual_seed(global_seed)  # not the one drawn from
        outputs.append(module(x))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-5, atol=1e-6)
    generator.manual_seed(6)
    assert not torch.allclose(recorded(x), outputs[0], atol=1e-3)  # the noise is drawn


def test_jit_script_refuses_training_mode_saying_so(model):
    scripted = _jit_or_skip(lambda: torch.jit.script(model))
    scripted.train()
    with pytest.raises(Exception, match="in evaluation mode only: call .eval"):
        scripted(torch.randn(2, 3, 6, 6))


def test_gaussian_reject_with_clamped_variance_has_the_exact_gradient_in_float64():
    """Where gaussian_reject's max(·, 0) clamps (a large δ), the plain-operator path and the
    eager one agree on the gradient too (in float64: float32 loses it to cancellation)."""
    from augmentbn.layers import _portable

    torch.manual_seed(0)
    x = (torch.randn(3, 4, 5, 5) * 2 + 1).double()
    shift = (torch.randn(4) * 3).double()
    grads = []
    for function in (ab.functional.augment_batch_norm, _portable.augment_batch_norm):
        xa = x.clone().requires_grad_()
        kwargs = dict(theta=5.0, noise="gaussian_reject", noise_std=3.0, mean_shift=shift)
        if function is _portable.augment_batch_norm:
            kwargs.update(running_stats="perturbed", num_features=4)
        function(xa, None, None, None, None, True, 0.1, 1e-5, **kwargs).square().sum().backward()
        grads.append(xa.grad)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert ((var - shift * (2 * mean + shift)) < 0).any()  # some channel clamps
    # the clamped channels' gradients are large (1/sqrt(ε) ≈ 316 times the input's)
    assert (grads[1] - grads[0]).abs().max() <= 1e-8 * grads[0].abs().max()
