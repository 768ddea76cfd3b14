"""Multi-label scores and loss (`training/multilabel.py`) against scikit-learn and brute force,
and the mixing of multi-hot targets (`data/transforms.MultiHotMix`)."""

import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score
from sklearn.metrics import precision_recall_curve as sklearn_curve

from effnet_lightning.data.transforms import MixCollate
from effnet_lightning.training.multilabel import (
    MultilabelScores,
    asymmetric_loss,
    bce_loss,
    best_thresholds,
    f1_scores,
    per_class_scores,
    positive_weights,
    precision_recall_curve,
)


def predictions(seed: int = 0, images: int = 60, classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(images, classes, generator=generator) < 0.35).float()
    targets[0] = 1.0  # every class has a positive
    noise = torch.rand(images, classes, generator=generator)
    probs = (0.55 * targets + 0.6 * noise).clamp(0, 1).round(decimals=2)  # rounded: ties between scores
    return probs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_threshold_maximises_its_classes_f1_by_brute_force(seed):
    probs, targets = predictions(seed)
    chosen = best_thresholds(probs, targets)
    for c in range(probs.shape[1]):
        truth = targets[:, c].numpy()
        best = max(f1_score(truth, (probs[:, c] >= t).numpy(), zero_division=0) for t in probs[:, c].unique())
        assert f1_score(truth, (probs[:, c] >= chosen[c]).numpy(), zero_division=0) == pytest.approx(best, abs=1e-12)
        called, uncalled = probs[probs[:, c] >= chosen[c], c], probs[probs[:, c] < chosen[c], c]
        gap_below = called.min() - (uncalled.max() if len(uncalled) else 0)
        assert float(called.min() - chosen[c]) == pytest.approx(float(gap_below) / 2, abs=1e-6)  # halfway below


def test_the_scores_equal_scikit_learns():
    probs, targets = predictions(3)
    scores = MultilabelScores(5)
    scores.update(probs[:30], targets[:30])
    scores.update(probs[30:], targets[30:])
    values = scores.compute()
    assert float(values["map"]) == pytest.approx(average_precision_score(targets, probs, average="macro"), abs=1e-6)
    called = (probs >= scores.thresholds).numpy()
    assert float(values["f1_micro"]) == pytest.approx(f1_score(targets, called, average="micro"), abs=1e-6)
    assert float(values["f1_macro"]) == pytest.approx(f1_score(targets, called, average="macro"), abs=1e-6)


def test_test_scores_use_the_thresholds_given_and_a_class_without_positives_keeps_the_default():
    probs, targets = predictions(4)
    targets[:, 2] = 0
    assert best_thresholds(probs, targets)[2] == 0.5
    fixed = torch.full((5,), 0.7)
    scores = MultilabelScores(5, choose_thresholds=False)
    scores.thresholds = fixed
    scores.update(probs, targets)
    values = scores.compute()
    assert torch.equal(scores.thresholds, fixed)
    assert float(values["f1_micro"]) == pytest.approx(float(f1_scores(probs, targets, fixed)["f1_micro"]))


def test_a_pass_is_scored_once_whoever_asks_first(monkeypatch):
    """The reports read a pass's scores before the module logs them: one gathering and one
    threshold choice serve both, and the next pass is scored anew."""
    from effnet_lightning.training import multilabel

    chosen = []
    choose = multilabel.best_thresholds
    monkeypatch.setattr(multilabel, "best_thresholds", lambda p, t: chosen.append(len(p)) or choose(p, t))
    probs, targets = predictions(5)
    scores = MultilabelScores(5)
    scores.update(probs, targets)
    scored = scores.scored_pass()
    values = scores.compute()
    assert chosen == [60]
    assert torch.equal(scored.probs, probs) and torch.equal(scored.targets, targets)
    assert torch.equal(scored.thresholds, scores.thresholds)
    assert float(values["f1_micro"]) == pytest.approx(float(f1_scores(probs, targets, scored.thresholds)["f1_micro"]))
    scores.reset()
    scores.update(probs[:20], targets[:20])
    assert len(scores.scored_pass().probs) == 20 and chosen == [60, 20]


def test_the_loss_is_binary_cross_entropy_with_smoothing_and_positive_weights():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    p = logits.sigmoid()
    plain = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(bce_loss(logits, targets)) == pytest.approx(float(plain), rel=1e-6)
    smooth = targets * 0.9 + 0.1 / 3
    expected = -(smooth * p.log() + (1 - smooth) * (1 - p).log()).mean()
    assert float(bce_loss(logits, targets, 0.1)) == pytest.approx(float(expected), rel=1e-6)
    weights = positive_weights([2, 0, 5], images=10)
    assert weights.tolist() == pytest.approx([4.0, 9.0, 1.0])
    weighted = -(weights * targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(bce_loss(logits, targets, pos_weight=weights)) == pytest.approx(float(weighted), rel=1e-6)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_mixing_multi_hot_targets_mixes_them_as_the_images_are_mixed(mixup, cutmix):
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    targets = torch.eye(4)[:, :3] + torch.tensor([0.0, 0.0, 1.0])  # multi-hot rows
    samples = [(images[i], targets[i], 123) for i in range(4)]
    mixed, soft = MixCollate(3, mixup, cutmix, multilabel=True)(samples)
    # Image i is lam x image i + (1 - lam) x image i-1 (in value or in area): recover lam from it.
    share = (mixed[1] - images[0]).mean() / (images[1] - images[0]).mean()
    assert torch.allclose(soft, targets * share + targets.roll(1, 0) * (1 - share), atol=1e-6)
    again, _ = MixCollate(3, mixup, cutmix, multilabel=True)(samples)
    assert torch.equal(mixed, again)  # seeded by the first sample's seed


def test_the_asymmetric_loss_by_hand_and_as_cross_entropy_without_its_settings():
    logits = torch.tensor([[1.5, -0.5, 0.2, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.3, 0.0]])  # 0.3: a mixed target
    assert float(asymmetric_loss(logits, targets, 0.0, 0.0, 0.0)) == pytest.approx(float(bce_loss(logits, targets)))
    p = logits.sigmoid()[0]
    shifted = (p - 0.05).clamp(min=0)
    terms = [
        (1 - p[0]) * p[0].log(),  # a positive, gamma_pos 1
        shifted[1] ** 4 * (1 - shifted[1]).log(),  # a negative, shifted and focused
        0.3 * (1 - p[2]) * p[2].log() + 0.7 * shifted[2] ** 4 * (1 - shifted[2]).log(),
        0.0,  # p < clip: an easy negative counts nothing
    ]
    expected = -sum(float(t) for t in terms) / 4
    assert float(asymmetric_loss(logits, targets, 4.0, 1.0, 0.05)) == pytest.approx(expected, rel=1e-5)


def test_per_class_scores_are_scikit_learns_and_a_class_without_images_has_none():
    probs, targets = predictions(3)
    targets[:, 4] = 0  # no image of the last class
    thresholds = torch.tensor([0.5, 0.3, 0.7, 1.5, 0.5])  # nothing scores 1.5: none called
    scores = per_class_scores(probs, targets, thresholds)
    for c in range(4):
        truth, called = targets[:, c].numpy(), (probs[:, c] >= thresholds[c]).numpy()
        assert int(scores["images"][c]) == int(truth.sum())
        assert float(scores["ap"][c]) == pytest.approx(average_precision_score(truth, probs[:, c].numpy()), abs=1e-6)
        assert float(scores["recall"][c]) == pytest.approx(recall_score(truth, called))
        assert float(scores["f1"][c]) == pytest.approx(f1_score(truth, called, zero_division=0))
        if called.any():
            assert float(scores["precision"][c]) == pytest.approx(precision_score(truth, called))
    assert scores["precision"][3].isnan() and scores["f1"][3] == 0
    assert int(scores["images"][4]) == 0 and scores["ap"][4].isnan() and scores["recall"][4].isnan()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_precision_recall_curve_is_scikit_learns(seed):
    probs, targets = predictions(seed)
    for c in range(probs.shape[1]):
        precision, recall = precision_recall_curve(probs[:, c], targets[:, c])
        expected_p, expected_r, _ = sklearn_curve(targets[:, c].numpy(), probs[:, c].numpy())
        # scikit-learn runs from the lowest score up and ends at (recall 0, precision 1).
        assert precision.tolist() == pytest.approx(expected_p[::-1][1:].tolist())
        assert recall.tolist() == pytest.approx(expected_r[::-1][1:].tolist())
