"""The LightningModule: the head's start, steps and logging, class names, hyperparameters,
test-time flip."""

import pytest
import torch

from effnet_lightning.training.module import EfficientNetModule
from tests.helpers.networks import randomise_batchnorm


def test_fresh_head_starts_at_zero_and_loaded_head_is_kept():
    module = EfficientNetModule("b0", num_classes=4, class_names=["a", "b", "c", "d"])
    assert torch.all(module.model.classifier.weight == 0)
    donor = EfficientNetModule("b0", num_classes=4, zero_init_head=False).model
    loaded = EfficientNetModule("b0", num_classes=4, weights=donor.state_dict())
    assert torch.equal(loaded.model.classifier.weight, donor.classifier.weight)


def test_step_logs_loss_and_metrics_and_returns_predictions():
    module = EfficientNetModule("b0", num_classes=3, channels_last=True).train()
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    out = module.model_step((images, targets), "val")
    assert out["preds"].shape == (4,) and out["loss"].item() == pytest.approx(
        torch.log(torch.tensor(3.0)).item(), abs=1e-4
    )
    computed = module.metrics["val_metrics"].compute()
    assert set(computed) == {"val/acc", "val/acc_top5"}
    assert computed["val/acc_top5"].item() == 1.0  # 3 classes: top-5 covers all


def test_class_names_must_match_the_count():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        EfficientNetModule("b0", num_classes=3, class_names=["a", "b"])


def test_checkpoint_of_other_classes_is_refused():
    module = EfficientNetModule("b0", num_classes=2, class_names=["cat", "dog"])
    checkpoint = {"hyper_parameters": {"class_names": ["ant", "bee"]}}
    with pytest.raises(ValueError, match=r"trained on classes \['ant', 'bee'\] but the data has \['cat', 'dog'\]"):
        module.on_load_checkpoint(checkpoint)


def test_hyperparameters_are_plain_types():
    module = EfficientNetModule("b3", num_classes=2, class_names=["x", "y"])
    hp = dict(module.hparams)
    assert hp["preprocessing"] == {
        "crop_size": 300,
        "resize_size": 342,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
    }
    allowed = (str, int, float, bool, list, dict, type(None))
    assert all(isinstance(v, allowed) for v in hp.values())


def test_test_time_flip_averages_an_image_and_its_mirror_in_eval_only():
    torch.manual_seed(0)
    module = EfficientNetModule("b0", num_classes=4, test_time_flip=True, zero_init_head=False).eval()
    randomise_batchnorm(module.model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = (module.model(x) + module.model(x.flip(3))) / 2
        assert torch.allclose(module(x), expected, atol=1e-6)
        assert not torch.allclose(module.model(x), expected, atol=1e-4)  # the mirror image changes the logits


def test_from_scratch_residual_branches_start_at_zero_unless_batchnorm_is_frozen():
    def residual_scales(module):
        return torch.cat([b.project.bn.weight for b in module.model.blocks if b.has_residual])

    assert torch.all(residual_scales(EfficientNetModule(num_classes=3)) == 0)
    # frozen BatchNorm would keep a zero scale, and the branches off, for good
    assert torch.all(residual_scales(EfficientNetModule(num_classes=3, freeze_bn=True)) == 1)
    explicit = EfficientNetModule(num_classes=3, model_options={"zero_init_residual": False})
    assert torch.all(residual_scales(explicit) == 1) and explicit.hparams.model_options == {"zero_init_residual": False}
