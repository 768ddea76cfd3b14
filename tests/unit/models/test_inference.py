"""The inference form: BatchNorm folded, fused conv + activation on oneDNN, cache-sized slices."""

import torch

from effnet_lightning import create_model
from effnet_lightning.models import inference
from effnet_lightning.models.inference import fold_batchnorm
from effnet_lightning.models.layers import ConvBNAct
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers.networks import randomise_batchnorm
from tests.helpers.probes import batchnorm_count


def test_folded_network_gives_the_plain_networks_logits():
    cases = [
        ("b0", {}),
        ("b0", {"lean_bn_act": True}),
        ("lite0", {"padding": "same", "bn_eps": 1e-3}),
        ("v2-b0", {}),  # Fused-MBConv without expansion, with expansion, then MBConv
        ("v2-s", {"padding": "same", "bn_eps": 1e-3}),  # a Fused-MBConv without expansion with a residual
    ]
    for i, (variant, options) in enumerate(cases):
        model = randomise_batchnorm(create_model(variant, num_classes=10, **options), seed=i).eval()
        model = model.to(memory_format=torch.channels_last)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        folded = fold_batchnorm(model)
        assert folded.provenance.form == "folded" and model.provenance.form == "plain"
        assert batchnorm_count(folded) == 0 and batchnorm_count(model) > 0
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(i))
        images = x.clone()
        with torch.no_grad():
            plain, fast = model(x), folded(x)
        with torch.inference_mode():
            assert torch.equal(folded(x), fast)
        # in place only on the folded copy's own tensors: the caller's images and the plain network are untouched
        assert torch.equal(x, images) and not any(getattr(m, "inplace", False) for m in model.modules())
        # float32 rounding only: within 1e-4 of the largest logit
        assert (fast - plain).abs().max() <= 1e-4 * plain.abs().max() and plain.std() > 1
        assert torch.equal(fast.argmax(1), plain.argmax(1))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original untouched


def test_folded_network_runs_each_conv_and_activation_as_one_onednn_call_on_cpu(monkeypatch):
    calls = []

    def counting(*args):
        calls.append(args[7])  # the activation oneDNN applies
        return conv_act(*args)

    conv_act = inference._CONV_ACT
    monkeypatch.setattr(inference, "_CONV_ACT", counting)
    for i, (variant, options, activations) in enumerate(
        [("b0", {}, {"swish", "none"}), ("lite0", {"padding": "same"}, {"hardtanh", "none"})]
    ):
        model = randomise_batchnorm(create_model(variant, num_classes=10, **options), seed=i).eval()
        folded = fold_batchnorm(model.to(memory_format=torch.channels_last))
        pairs = [m for m in folded.modules() if isinstance(m, inference.FoldedConvAct)]
        x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(i))  # SAME pads one side more here
        calls.clear()
        with torch.inference_mode():
            fused = folded(x)
        assert len(calls) == len(pairs) == sum(isinstance(m, ConvBNAct) for m in model.modules()) and pairs
        assert set(calls) == activations
        with torch.no_grad():
            plain = model(x)
        assert (fused - plain).abs().max() <= 1e-4 * plain.abs().max() and plain.std() > 1
        calls.clear()
        with torch.enable_grad():  # any of these: conv then activation, the same logits
            assert torch.allclose(folded(x), fused, rtol=0, atol=1e-4 * plain.abs().max())
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert folded(x).dtype == torch.bfloat16  # autocast's own convolutions ran
        torch.compiler.reset()  # after earlier tests' graphs this compile took 140 s instead of 3
        with torch.inference_mode():
            compiled = torch.compile(folded, backend="eager")(x)
        assert calls == [] and torch.allclose(compiled, fused, rtol=0, atol=1e-4 * plain.abs().max())


def test_cpu_evaluation_runs_large_images_in_cache_sized_slices_with_the_same_logits():
    # BatchNorm statistics of 224 px images: logits near unit scale (with statistics of other
    # sizes, random weights blow the activations up and any rounding with them)
    model = randomise_batchnorm(create_model("b0", num_classes=10), seed=3, size=224).eval()
    folded = fold_batchnorm(model.to(memory_format=torch.channels_last))
    seen = []

    def recording(x):
        seen.append(x.shape[0])
        return folded(x)

    x = torch.randn(12, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = folded(x)
        sliced = inference.in_chunks(recording, x)
        assert seen == [5, 5, 2]  # 262,144 pixels a slice: 5 images of 224 x 224
        assert (sliced - whole).abs().max() <= 1e-4 and whole.std() > 1
        seen.clear()
        inference.in_chunks(recording, x[:5])
        inference.in_chunks(recording, torch.randn(32, 3, 64, 64))  # small images: the whole batch
        assert seen == [5, 32]
    seen.clear()
    inference.in_chunks(recording, x[:6])  # with gradients (training): the whole batch
    assert seen == [6]

    # the module's evaluation forward slices, its training forward does not
    module = EfficientNetModule("b0", num_classes=10)
    sizes = []
    module.model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    with torch.inference_mode():
        module.eval()(x)
    module.train()(x[:6])
    assert sizes == [5, 5, 2, 6]
