"""Parameter groups, TF RMSProp, the learning-rate schedules and the global-batch scaling."""

import math

import pytest
import torch

from effnet_lightning.models.efficientnet import EfficientNet
from effnet_lightning.training.optim import RMSpropTF, lr_lambda, make_optimizer, param_groups, scale_lr


def test_no_weight_decay_on_batchnorm_and_bias():
    model = EfficientNet("b0", num_classes=10)
    decay, no_decay = param_groups(model, 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        is_bn_or_bias = name.endswith("bias") or ".bn." in name
        assert (id(p) in no_decay_ids) == is_bn_or_bias, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine():
    f = lr_lambda("cosine", total_steps=110, steps_per_epoch=10, warmup_epochs=1, min_lr_ratio=0.0)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)


def test_warmup_then_paper_step_decay():
    f = lr_lambda("step", total_steps=1000, steps_per_epoch=10, warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4)
    assert f(49) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.97 ** math.floor(50 / 24))  # decay counted from step 0, as TF does
    assert f(71) == pytest.approx(0.97**2) and f(72) == pytest.approx(0.97**3)
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_lambda("linear", 10, 1)


def test_rmsprop_tf_follows_tensorflows_update():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    ms, mom, value = 1.0, 0.0, 1.0
    for g in (0.5, -0.2, 0.3):
        w.grad = torch.tensor([g])
        opt.step()
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.9 * mom + 0.1 * g / math.sqrt(ms + 1e-3)
        value -= mom
        assert w.item() == pytest.approx(value, rel=1e-6)


def test_make_optimizer_choices():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    assert isinstance(make_optimizer("sgd", groups, 0.1, 0.9), torch.optim.SGD)
    assert isinstance(make_optimizer("rmsprop_tf", groups, 0.1, 0.9), RMSpropTF)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb': choose one of sgd, adamw, rmsprop_tf"):
        make_optimizer("lamb", groups, 0.1, 0.9)


def test_backbone_groups_get_a_scaled_learning_rate():
    model = EfficientNet("b0", num_classes=10)
    groups = param_groups(model, 1e-5, backbone_lr_scale=0.1)
    optimizer = make_optimizer("sgd", groups, lr=0.5, momentum=0.9)
    head = {id(p) for p in model.classifier.parameters()}
    for group in optimizer.param_groups:
        in_head = [id(p) in head for p in group["params"]]
        assert all(in_head) or not any(in_head)
        assert group["lr"] == pytest.approx(0.5 if all(in_head) else 0.05)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert [len(g["params"]) for g in optimizer.param_groups][:2] == [1, 1]  # classifier weight, bias


def test_layer_decay_gives_each_block_group_its_rate():
    """The head convolution at lr x backbone scale, each block group below at 0.5 of the one
    above (B0: stem, seven rows of blocks, head convolution), the classifier at lr."""
    model = EfficientNet("b0", num_classes=10)
    groups = model.block_groups()
    assert len(groups) == 9 and groups[0] == [model.stem] and groups[-1] == [model.head]
    assert sum(len(g) for g in groups[1:-1]) == len(model.blocks) == 16
    optimizer = make_optimizer("sgd", param_groups(model, 1e-5, 0.1, layer_decay=0.5), lr=0.4, momentum=0.9)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter, once
    for p in model.classifier.parameters():
        assert lr_of[id(p)] == pytest.approx(0.4)
    for depth, modules in enumerate(reversed(groups)):
        rates = [lr_of[id(p)] for m in modules for p in m.parameters()]
        assert rates == pytest.approx([0.4 * 0.1 * 0.5**depth] * len(rates)), depth
    assert min(lr_of.values()) == pytest.approx(0.04 / 256)  # the stem: 0.5^8 below the head convolution
    # without a backbone scale the head convolution learns at lr, and decay works alone
    optimizer = make_optimizer("sgd", param_groups(model, 1e-5, layer_decay=0.5), lr=0.4, momentum=0.9)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model.head.conv.weight)] == lr_of[id(model.classifier.weight)] == pytest.approx(0.4)
    assert lr_of[id(model.stem.conv.weight)] == pytest.approx(0.4 / 256)


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert scale_lr(0.016, 256, batch=128, world_size=8, accumulate=1) == (pytest.approx(0.064), 1024)
    assert scale_lr(0.016, 256, batch=128, world_size=8, accumulate=4) == (pytest.approx(0.256), 4096)
    assert scale_lr(0.5, 1024, batch=32, world_size=2, accumulate=2) == (pytest.approx(0.0625), 128)
