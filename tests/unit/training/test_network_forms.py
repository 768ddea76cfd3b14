"""The forms a network runs in (`training/network_forms.py`): the folded copy made for an
evaluation and dropped after it, the same logits as the plain network, no state_dict keys of its
own in the module, and one compiled wrapper per form, reused."""

import torch

from effnet_lightning.models.compilation import CompiledOrEager
from effnet_lightning.models.factory import create_model
from effnet_lightning.training.module import EfficientNetModule
from effnet_lightning.training.network_forms import NetworkForms
from tests.helpers.networks import randomise_batchnorm


def network():
    torch.manual_seed(0)
    model = create_model("b0", num_classes=3, drop_path_rate=0.0, dropout=0.0)
    return randomise_batchnorm(model).eval()


def batchnorms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_the_folded_form_is_made_for_an_evaluation_and_dropped_after_it():
    model = network()
    forms = NetworkForms(model, fold_bn=True)
    assert forms.folded is None and forms.network(training=False) is model
    forms.start_evaluation()
    folded = forms.folded
    assert folded is not None and folded is not model
    assert forms.network(training=False) is folded and forms.network(training=True) is model
    assert batchnorms(model) == 49 and batchnorms(folded) == 0  # every BatchNorm went into its convolution
    forms.end_evaluation()
    assert forms.folded is None and forms.network(training=False) is model
    unfolded = NetworkForms(model, fold_bn=False)
    unfolded.start_evaluation()
    assert unfolded.folded is None and unfolded.network(training=False) is model


def test_the_folded_form_gives_the_plain_logits():
    # In float64 the folding is exact up to rounding; in float32 the folded weights round
    # differently (logits of ~25 then differ by ~1e-5 of their size, see test_compilation.py).
    model = network().double()
    forms = NetworkForms(model)
    forms.start_evaluation()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        plain, folded = model(x), forms.network(training=False)(x)
    assert plain.shape == folded.shape == (2, 3)
    assert plain.abs().max() > 0.1  # logits that depend on the weights, not all near zero
    assert (folded - plain).abs().max() <= 1e-5


def test_the_module_keeps_only_the_plain_networks_keys_and_a_checkpoint_round_trips(tmp_path):
    module = EfficientNetModule("b0", num_classes=3, zero_init_head=False).eval()
    randomise_batchnorm(module.model)
    keys = list(module.state_dict())
    assert keys == ["model." + k for k in module.model.state_dict()]
    module.forms.start_evaluation()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        module(x)  # through the folded form
    assert module.network is module.forms.folded
    assert list(module.state_dict()) == keys  # the folded copy is no submodule
    assert [name for name, _ in module.named_children()] == [
        "model",
        "metrics",
        "extra_val_acc",
        "val_confusion",
        "test_confusion",
        "scores",
    ]
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    module.forms.end_evaluation()
    restored = EfficientNetModule("b0", num_classes=3).eval()
    restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(restored(x), module(x))  # the plain network's weights, all of them


def test_one_compiled_wrapper_per_form_is_reused(monkeypatch):
    calls = []

    def recording_compile(module, **options):
        calls.append((module, options))
        return module  # the module itself: what is compiled is recorded, nothing is run through dynamo

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = network()
    forms = NetworkForms(model, compile=True)
    training = forms.network(training=True)
    assert isinstance(training, CompiledOrEager) and training.module is model
    assert forms.network(training=True) is training and forms.network(training=False) is training
    assert calls == [(model, {})]
    forms.start_evaluation()
    inference = forms.network(training=False)
    assert inference is not training and inference.module is forms.folded
    assert forms.network(training=False) is inference
    assert calls == [(model, {}), (forms.folded, {"options": {"freezing": True}})]  # constants in the graph
    forms.end_evaluation()
    again = forms.network(training=True)
    assert again.module is model and len(calls) == 3 and calls[-1] == (model, {})
