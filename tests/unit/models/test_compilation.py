"""The `compile` and `grad_checkpointing` switches: same numbers and state_dict keys as the plain
network, an eager fallback where compiling fails, exports unaffected."""

import functools

import pytest
import torch
import torch.nn.functional as F

from effnet_lightning.export.folder import export_model
from effnet_lightning.models.compilation import CompiledOrEager
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers.networks import randomise_batchnorm


def pair(**switches):
    """A plain module and one with `switches`, holding the same weights."""
    torch.manual_seed(0)
    plain = EfficientNetModule("b0", num_classes=3, zero_init_head=False, drop_path_rate=0.0, dropout=0.0)
    randomise_batchnorm(plain.model)
    switched = EfficientNetModule(
        "b0", num_classes=3, zero_init_head=False, drop_path_rate=0.0, dropout=0.0, **switches
    )
    switched.load_state_dict(plain.state_dict())
    return plain, switched


def test_compiled_module_gives_the_plain_outputs_and_keys(monkeypatch):
    # Dynamo's graph capture for real, without inductor's minutes of C++ code generation.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    plain, compiled = pair(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain.eval()(x)
        assert isinstance(compiled.eval().network, CompiledOrEager)
        assert torch.allclose(compiled(x), expected, atol=1e-5)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # the compiled function is no submodule


def test_the_inference_form_compiles_with_freezing_and_training_without(monkeypatch):
    """validate / test / predict compile the folded network with inductor's freezing (its
    weights are constants); training compiles the plain network without it."""
    calls, real_compile = [], torch.compile

    def recording_compile(module, **options):
        calls.append((module, options))
        return real_compile(module, backend="eager")  # graph capture for real, no inductor

    monkeypatch.setattr(torch, "compile", recording_compile)
    plain, compiled = pair(compile=True)
    x = torch.randn(2, 3, 64, 64)
    compiled.forms.start_evaluation()  # what on_validation_start / on_test_start / on_predict_start do
    with torch.no_grad():
        expected = plain.eval()(x)
        got = compiled.eval()(x)
    folded_module, options = calls[-1]
    assert options == {"options": {"freezing": True}} and folded_module is compiled.forms.folded
    # float32 rounding only (the folded weights round differently): within 1e-4 of the largest logit
    assert folded_module is not compiled.model and (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    compiled.train()
    assert compiled.network.module is compiled.model and calls[-1] == (compiled.model, {})


def test_failing_compile_warns_once_and_runs_eagerly(monkeypatch):
    def broken_compile(module, **options):
        def run(*args):
            raise RuntimeError("InductorError: no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    plain, compiled = pair(compile=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        warning = "torch.compile is unavailable here .*no C\\+\\+ compiler.*running eagerly"
        with pytest.warns(RuntimeWarning, match=warning):
            out = compiled.eval()(x)
        assert torch.allclose(out, plain.eval()(x), atol=1e-5)
        assert compiled.network.compiled is None  # no second attempt, no second warning


def test_compile_unsupported_altogether_falls_back(monkeypatch):
    def unsupported(module, **options):
        raise RuntimeError("torch.compile is not supported on this platform")

    monkeypatch.setattr(torch, "compile", unsupported)
    model = torch.nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="not supported on this platform"):
        run = CompiledOrEager(model)
    x = torch.randn(1, 2)
    assert torch.equal(run(x), model(x))


def test_grad_checkpointing_gives_the_plain_loss_and_gradients():
    plain, checkpointed = pair(grad_checkpointing=True)
    assert checkpointed.model.grad_checkpointing and not plain.model.grad_checkpointing
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    losses, grads = [], []
    for module in (plain, checkpointed):
        loss = F.cross_entropy(module.train()(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in module.model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_export_works_with_the_switches_on(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    module = EfficientNetModule("b0", num_classes=3, compile=True, grad_checkpointing=True, lean_bn_act=True)
    randomise_batchnorm(module.model)
    module.model.provenance = module.model.provenance.with_preprocessing(
        module.model.provenance.preprocessing.resized(64)
    )
    info = export_model(module.model, tmp_path, class_names=["a", "b", "c"], formats=["torchscript", "safetensors"])
    assert max(info["max_abs_logit_difference"].values()) < 1e-4
