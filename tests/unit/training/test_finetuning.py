"""The fine-tuning policy (`training/finetuning.py`) on its own, on a small network: which block
groups are frozen in which epoch, which parameters train after each epoch's start, what runs in
eval mode, the values refused, and that it is plain PyTorch."""

import subprocess
import sys

import pytest
from torch import nn

from effnet_lightning.training.finetuning import FineTuning
from effnet_lightning.training.module import EfficientNetModule


class Small(nn.Module):
    """What the policy reads of an EfficientNet: block_groups(), classifier, dropout."""

    def __init__(self):
        super().__init__()

        def conv_bn(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        self.stem = conv_bn(3, 4)
        self.blocks = nn.ModuleList([conv_bn(4, 4) for _ in range(3)])
        self.head = conv_bn(4, 8)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(8, 3)

    def block_groups(self) -> list[list[nn.Module]]:
        return [[self.stem], *([b] for b in self.blocks), [self.head]]


def names(network: Small, groups: list[list[nn.Module]]) -> list[str]:
    by_id = {id(m): name for name, m in network.named_children()}
    by_id.update({id(b): f"block{i}" for i, b in enumerate(network.blocks)})
    return [by_id[id(m)] for modules in groups for m in modules]


def training_parts(network: Small) -> dict[str, bool]:
    """Per part: whether all its parameters train."""
    parts = {"stem": network.stem, **{f"block{i}": b for i, b in enumerate(network.blocks)}}
    parts |= {"head": network.head, "classifier": network.classifier}
    return {name: all(p.requires_grad for p in m.parameters()) for name, m in parts.items()}


ALL = ["stem", "block0", "block1", "block2", "head"]


def test_frozen_groups_per_epoch_from_the_input_up():
    net = Small()
    gradual = FineTuning(freeze_backbone_epochs=2, unfreeze_groups_per_epoch=2)
    assert [names(net, gradual.frozen_groups(net, epoch)) for epoch in range(5)] == [
        ALL,
        ALL,
        ["stem", "block0", "block1"],
        ["stem"],
        [],
    ]
    assert gradual.frozen_groups(net, None) == []  # no fit: nothing frozen
    at_once = FineTuning(freeze_backbone_epochs=1)
    assert [len(at_once.frozen_groups(net, epoch)) for epoch in range(3)] == [5, 0, 0]
    assert [at_once.backbone_frozen(epoch) for epoch in (None, 0, 1)] == [False, True, False]
    from_the_start = FineTuning(unfreeze_groups_per_epoch=3)  # no frozen epochs: the top 3 at epoch 0
    assert [names(net, from_the_start.frozen_groups(net, epoch)) for epoch in range(3)] == [
        ["stem", "block0"],
        [],
        [],
    ]
    assert FineTuning().frozen_groups(net, 0) == [] and not FineTuning().freezes


def test_start_epoch_sets_requires_grad_and_returns_the_line_to_log():
    net = Small()
    policy = FineTuning(freeze_backbone_epochs=1, unfreeze_groups_per_epoch=2)
    net.eval()
    messages, trains = [], []
    for epoch in range(5):
        messages.append(policy.start_epoch(net, epoch))
        trains.append(training_parts(net))
        assert net.training  # start_epoch puts the whole network in train mode
    assert messages == [
        None,
        "epoch 1: the top 2 of the backbone's 5 block groups train",
        "epoch 2: the top 4 of the backbone's 5 block groups train",
        "epoch 3: the backbone trains from now on",
        None,
    ]

    def on(*parts):
        return {name: name in parts for name in [*ALL, "classifier"]}

    assert trains == [
        on("classifier"),
        on("block2", "head", "classifier"),
        on("block0", "block1", "block2", "head", "classifier"),
        on(*ALL, "classifier"),
        on(*ALL, "classifier"),
    ]
    assert FineTuning(freeze_backbone_epochs=2).start_epoch(Small(), 2) == "epoch 2: the backbone trains from now on"


def test_freeze_bn_keeps_batchnorm_out_of_training_in_every_epoch():
    net = Small()
    policy = FineTuning(freeze_bn=True)
    assert policy.model_options == {"zero_init_residual": False} and FineTuning().model_options == {}
    policy.fix_batchnorm(net)
    batchnorm = [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert len(batchnorm) == 10 and not any(p.requires_grad for p in batchnorm)
    assert policy.start_epoch(net, 0) is None  # nothing unfreezes: no line
    assert not any(p.requires_grad for p in batchnorm)
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(p.requires_grad for p in convs) and net.classifier.weight.requires_grad
    policy.hold_frozen_in_eval(net, 0)
    assert [m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [False] * 5
    assert all(m.training for m in net.modules() if not isinstance(m, nn.BatchNorm2d))


def test_what_does_not_train_is_held_in_eval_mode():
    net = Small()
    policy = FineTuning(freeze_backbone_epochs=1, unfreeze_groups_per_epoch=2)
    policy.start_epoch(net, 0)
    policy.hold_frozen_in_eval(net, 0)  # the frozen epoch: the whole backbone on its statistics
    backbone = [m for g in net.block_groups() for top in g for m in top.modules()]
    assert len(backbone) == 20 and not any(m.training for m in backbone)
    policy.start_epoch(net, 1)
    assert all(m.training for m in net.modules())
    policy.hold_frozen_in_eval(net, 1)  # the bottom three groups stay on their statistics
    groups = ["stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    held = [g for g in groups if not any(m.training for m in net.get_submodule(g).modules())]
    assert held == ["stem", "blocks.0", "blocks.1"]
    assert all(m.training for g in groups[3:] for m in net.get_submodule(g).modules()) and net.classifier.training
    net.train()
    policy.hold_frozen_in_eval(net, None)  # no fit: nothing frozen
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize(("epochs", "per_epoch"), [(-1, 0), (0, -2)])
def test_negative_values_are_refused_in_one_line(epochs, per_epoch):
    message = f"need freeze_backbone_epochs >= 0 and unfreeze_groups_per_epoch >= 0, got {epochs} and {per_epoch}"
    with pytest.raises(ValueError, match=message):
        FineTuning(freeze_backbone_epochs=epochs, unfreeze_groups_per_epoch=per_epoch)
    with pytest.raises(ValueError, match=message):  # the module refuses them before building anything
        EfficientNetModule("b0", num_classes=3, freeze_backbone_epochs=epochs, unfreeze_groups_per_epoch=per_epoch)


def test_ddp_needs_unused_parameters_only_when_something_freezes():
    assert [FineTuning(*values).needs_unused_parameters for values in [(0, 0), (1, 0), (0, 1), (0, 0, True)]] == [
        False,
        True,
        True,
        False,
    ]


def test_the_module_delegates_to_its_policy():
    module = EfficientNetModule(
        "b0", num_classes=3, freeze_backbone_epochs=2, unfreeze_groups_per_epoch=3, freeze_bn=True
    )
    assert module.finetuning == FineTuning(2, 3, True)
    assert not module.backbone_frozen  # no trainer attached: nothing frozen
    assert len(module.finetuning.frozen_groups(module.model, 2)) == len(module.model.block_groups()) - 3 == 6


def test_the_policy_is_plain_pytorch():
    code = (
        "import sys, effnet_lightning.training.finetuning\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
