"""The teacher and its loss term (`effnet_lightning/training/distillation.py`), and the module's
training step with a teacher and unlabelled images."""

import math

import pytest
import torch

from effnet_lightning.data import demo
from effnet_lightning.models.efficientnet import EfficientNet
from effnet_lightning.models.preprocessing import Preprocessing
from effnet_lightning.models.scaling import get_variant
from effnet_lightning.training.distillation import Distill, Teacher, distillation_loss, state_digest
from effnet_lightning.training.module import EfficientNetModule
from tests.helpers.networks import randomise_batchnorm

IMAGENET = Preprocessing(crop_size=32, resize_size=37)


def small_teacher(pre: Preprocessing, classes: list[str], seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    network = randomise_batchnorm(EfficientNet(get_variant("b0"), num_classes=len(classes)), seed=seed, size=32)
    network.provenance = network.provenance.with_preprocessing(pre)
    return Teacher(network, "teacher.ckpt", classes)


def test_the_loss_is_hintons_kl_at_the_temperature_times_its_square():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    for t in (1.0, 4.0):
        p_teacher = (teacher / t).softmax(1)
        by_hand = (p_teacher * (p_teacher.log() - (student / t).log_softmax(1))).sum(1).mean() * t * t
        assert distillation_loss(student, teacher, t) == pytest.approx(float(by_hand), rel=1e-5)
    assert distillation_loss(teacher, teacher, 2.0) == pytest.approx(0.0, abs=1e-6)


def test_the_teacher_gets_the_students_pixels_at_its_own_size_and_normalisation():
    teacher_pre = Preprocessing(crop_size=40, resize_size=46, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    teacher = small_teacher(teacher_pre, ["a", "b"])
    pixels = torch.rand(3, 3, 32, 32)  # in [0, 1]
    mean, std = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1), torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    received = teacher.inputs((pixels - mean) / std, IMAGENET)
    resized = torch.nn.functional.interpolate(pixels, size=(40, 40), mode="bilinear", antialias=True)
    assert received.shape == (3, 3, 40, 40)
    assert torch.allclose(received, (resized - 0.5) / 0.5, atol=1e-5)
    # at its own size and normalisation, the batch passes unchanged
    same = torch.randn(2, 3, 40, 40)
    assert torch.allclose(teacher.inputs(same, teacher_pre), same, atol=1e-6)


def test_the_teacher_is_frozen_folded_and_its_digest_follows_every_tensor():
    network = randomise_batchnorm(EfficientNet(get_variant("b0"), num_classes=3), size=32)
    digest = state_digest(network)
    teacher = Teacher(network, "spec", ["a", "b", "c"])
    assert teacher.digest == digest and not teacher.network.training
    assert not any(p.requires_grad for p in teacher.network.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.network.modules())  # folded
    with torch.no_grad():
        network.classifier.bias[0] += 1e-3
    assert state_digest(network) != digest
    logits = teacher.logits(torch.randn(2, 3, 32, 32), network.provenance.preprocessing)
    assert logits.dtype == torch.float32 and not logits.requires_grad


def test_teacher_classes_must_be_the_students_by_name_and_order():
    teacher = small_teacher(IMAGENET, ["a", "b", "c"])
    teacher.check_classes(["a", "b", "c"])
    with pytest.raises(
        ValueError, match=r"trained on classes \['a', 'b', 'c'\] but the student's data has \['a', 'c', 'b'\]"
    ):
        teacher.check_classes(["a", "c", "b"])
    nameless = Teacher(EfficientNet(get_variant("b0"), num_classes=3), "weights.pth", None)
    with pytest.raises(ValueError, match="its class names are unknown"):
        nameless.check_classes(["a", "b", "c"])


def student_with_teacher(alpha: float) -> EfficientNetModule:
    classes = list(demo.CLASSES)
    module = EfficientNetModule(
        "b0", num_classes=10, class_names=classes, freeze_bn=True, dropout=0.0, drop_path_rate=0.0
    )
    module.model.provenance = module.model.provenance.with_preprocessing(IMAGENET)
    randomise_batchnorm(module.model, seed=1, size=32)
    torch.nn.init.normal_(module.model.classifier.weight, std=0.05)
    module.distill = Distill(small_teacher(IMAGENET, classes, seed=2), alpha=alpha, temperature=2.0)
    return module.train()


def test_unlabelled_images_enter_the_loss_only_through_the_teachers_term():
    torch.manual_seed(0)
    images, targets, unlabelled = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9]), torch.randn(3, 3, 32, 32)
    module = student_with_teacher(alpha=0.3)
    module.finetuning.hold_frozen_in_eval(module.model, None)
    unlabelled.requires_grad_(True)
    loss = module.training_step((images, targets, unlabelled), 0)["loss"]
    # the label term over the 4 labelled images, the teacher's over all 7
    with torch.no_grad():
        logits = module(torch.cat([images, unlabelled]))
        teacher = module.distill.teacher.logits(torch.cat([images, unlabelled]), IMAGENET)
    label = torch.nn.functional.cross_entropy(logits[:4], targets, label_smoothing=0.1)
    assert float(loss) == pytest.approx(float(0.7 * label + 0.3 * distillation_loss(logits, teacher, 2.0)), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, unlabelled)
    assert grad.abs().sum() > 0
    # with the teacher's term off, the unlabelled images have no say at all
    module.distill.alpha = 0.0
    loss = module.training_step((images, targets, unlabelled), 0)["loss"]
    (grad,) = torch.autograd.grad(loss, unlabelled, allow_unused=True)
    assert grad is None or grad.abs().max() == 0
    assert float(loss) == pytest.approx(float(label), rel=1e-5)


def test_the_teacher_is_no_part_of_the_module():
    module = student_with_teacher(alpha=0.5)
    teacher = module.distill.teacher.network
    assert all(m is not teacher for m in module.modules())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in module.parameters()}
    assert set(module.state_dict()) == set(EfficientNetModule("b0", num_classes=10).state_dict())
    module.train()
    assert not teacher.training
    assert math.isclose(module.distill.alpha, 0.5)
