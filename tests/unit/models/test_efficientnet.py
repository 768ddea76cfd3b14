"""The EfficientNet network: sizes and GMACs against torchvision and the paper, initialisation,
stochastic depth, options."""

import subprocess
import sys

import pytest
import torch
import torchvision

from effnet_lightning import EfficientNet, create_model
from effnet_lightning.models.efficientnet import count_gmacs, count_parameters
from effnet_lightning.models.layers import DropPath
from effnet_lightning.models.scaling import from_phi

B_VARIANTS = [f"b{i}" for i in range(8)]


def torchvision_model(name: str) -> torch.nn.Module:
    return getattr(torchvision.models, f"efficientnet_{name}")()


def torchvision_resolution(name: str) -> int:
    weights = torchvision.models.get_weight(f"EfficientNet_{name.upper()}_Weights.IMAGENET1K_V1")
    return weights.transforms.keywords["crop_size"]


@pytest.mark.parametrize("name", B_VARIANTS)
def test_parameter_count_equals_torchvision(name):
    assert count_parameters(EfficientNet(name)) == count_parameters(torchvision_model(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", B_VARIANTS)
def test_gmacs_within_one_percent_of_torchvision(name):
    res = torchvision_resolution(name)
    ours, theirs = count_gmacs(EfficientNet(name), res), count_gmacs(torchvision_model(name), res)
    print(f"{name} @ {res}: ours {ours:.3f} GMACs, torchvision {theirs:.3f}")
    assert ours == pytest.approx(theirs, rel=0.01)


def test_b0_gmacs_match_the_paper():
    assert count_gmacs(EfficientNet("b0"), 224) == pytest.approx(0.386, abs=0.001)


def test_phi_one_doubles_b0_flops():
    ratio = count_gmacs(EfficientNet(from_phi(1)), from_phi(1).resolution) / count_gmacs(EfficientNet("b0"), 224)
    print(f"phi=1 / phi=0 GMACs ratio: {ratio:.3f}")
    assert ratio == pytest.approx(2.0, rel=0.15)


def test_phi_zero_model_equals_b0():
    torch.manual_seed(0)
    b0 = EfficientNet("b0")
    phi0 = EfficientNet(from_phi(0))
    phi0.load_state_dict(b0.state_dict())  # same keys and shapes
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(b0.eval()(x), phi0.eval()(x))


def test_forward_features_head_and_reset_classifier(image_batch):
    model = EfficientNet("b0", num_classes=10).eval()
    feats = model.forward_features(image_batch)
    assert feats.shape == (2, 1280, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
    assert torch.equal(model.forward_head(feats), model(image_batch))
    model.reset_classifier(3)
    assert model(image_batch).shape == (2, 3) and model.num_classes == 3
    bound = 1 / 3**0.5
    assert model.classifier.weight.abs().max() <= bound and torch.all(model.classifier.bias == 0)
    model.reset_classifier(0)
    assert model(image_batch).shape == (2, 1280)


def test_initialisation_follows_the_paper():
    model = EfficientNet("b0")
    conv = model.blocks[3].expand.conv  # 1x1, 24 -> 144: fan_out = 144
    assert conv.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    assert torch.all(model.stem.bn.weight == 1) and torch.all(model.stem.bn.bias == 0)
    assert model.classifier.weight.abs().max() <= 1 / 1000**0.5


def test_residual_blocks_start_as_the_identity_unless_asked_otherwise(image_batch):
    model = EfficientNet("b0", num_classes=10, drop_path_rate=0.0)
    residual = [block for block in model.blocks if block.has_residual]
    assert len(residual) == 9  # B0: 16 blocks, the first of each of the 7 rows changes the shape
    x = model.stem(image_batch)
    for block in model.blocks:  # in training mode: batch statistics, as the first step sees them
        out = block(x)
        assert torch.equal(out, x) == block.has_residual
        x = out
    for block in model.blocks:  # the branch's other BatchNorms, and blocks without a residual, as the paper
        assert torch.all(block.dw.bn.weight == 1)
        assert torch.all(block.project.bn.weight == (0 if block.has_residual else 1))
    plain = EfficientNet("b0", num_classes=10, zero_init_residual=False)
    assert all(torch.all(block.project.bn.weight == 1) for block in plain.blocks)
    # through create_model, as --model.model_options '{"zero_init_residual": false}' passes it
    assert model.blocks[2].has_residual  # B0's first residual block: the second of row 2
    assert torch.all(create_model("b0", num_classes=10, zero_init_residual=False).blocks[2].project.bn.weight == 1)


def test_stochastic_depth_rates_per_block():
    model = EfficientNet("b0", drop_path_rate=0.2)
    n = len(model.blocks)
    for i, block in enumerate(model.blocks):
        if block.has_residual:
            assert isinstance(block.drop_path, DropPath) and block.drop_path.rate == pytest.approx(0.2 * i / n)
        else:
            assert isinstance(block.drop_path, torch.nn.Identity)
    assert sum(b.has_residual for b in model.blocks) == 9


def test_stochastic_depth_and_dropout_only_act_in_training(image_batch):
    # residual branches that start at zero would make stochastic depth a no-op here
    model = EfficientNet("b0", num_classes=5, drop_path_rate=0.5, dropout=0.5, zero_init_residual=False)
    model.eval()
    assert torch.equal(model(image_batch), model(image_batch))
    model.train()
    torch.manual_seed(0)
    a = model(image_batch)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(image_batch))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = EfficientNet("b0", num_classes=4, drop_path_rate=0.3, zero_init_residual=False).train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])

    def loss_and_grads(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(123)  # same drop-path and dropout masks in both runs
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    # BN running stats move on each training forward; snapshot and restore between runs.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_a, grads_a = loss_and_grads(False)
    model.load_state_dict(state)
    loss_b, grads_b = loss_and_grads(True)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    assert max(g.abs().max() for g in grads_a.values()) > 0


def test_channels_last_gives_the_same_output(image_batch):
    torch.manual_seed(0)
    model = EfficientNet("b0", num_classes=7, padding="same", zero_init_residual=False).eval()
    ref = model(image_batch)
    model = model.to(memory_format=torch.channels_last)
    out = model(image_batch.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_lite_uses_relu6_and_no_se():
    model = EfficientNet("lite0")
    assert isinstance(model.stem.act, torch.nn.ReLU6)
    assert all(isinstance(b.se, torch.nn.Identity) for b in model.blocks)
    assert count_parameters(model) == 4_652_008


def test_options_change_the_network():
    model = EfficientNet("b0", activation="relu", se=False, bn_eps=1e-3, bn_momentum=0.01, in_channels=1, dropout=0.1)
    assert isinstance(model.head.act, torch.nn.ReLU)
    assert all(isinstance(b.se, torch.nn.Identity) for b in model.blocks)
    assert model.stem.bn.eps == 1e-3 and model.stem.bn.momentum == 0.01
    assert model.stem.conv.in_channels == 1 and model.dropout.p == 0.1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1000)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        EfficientNet("b0", activation="gelu")


def test_create_model_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9': choose one of b0, b1"):
        create_model("b9")


def test_the_network_code_never_imports_lightning():
    code = (
        "import sys, importlib, pkgutil, effnet_lightning.models as m\n"
        "for info in pkgutil.iter_modules(m.__path__): importlib.import_module(f'effnet_lightning.models.{info.name}')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
