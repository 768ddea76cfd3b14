"""The W&B validation report: sample pictures that show the validation images themselves, spread
over the classes, and a confusion matrix of non-zero cells, read back from an offline run."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from effnet_lightning.data.decode import load_rgb
from effnet_lightning.data.transforms import eval_transform
from effnet_lightning.models.preprocessing import Preprocessing
from tests.helpers import wandb_offline
from tests.helpers.cli import run_cli


@pytest.mark.slow
def test_fit_logs_real_samples_of_many_classes_and_the_non_zero_confusion_cells(tmp_path, small_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_MODE="offline", WANDB_SILENT="true")
    # 71 validation images sorted by class, in 9 batches; the sanity check before them must not count.
    tiny = {
        "data.root": small_root,
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.num_workers": 0,
        "trainer.enable_progress_bar": "false",
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
    }
    run_cli(
        ["fit", *(arg for flag, value in tiny.items() for arg in (f"--{flag}", value))], tmp_path, env=env, timeout=300
    )
    (run,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    files = run.parent / "files"
    (report,) = [h for h in wandb_offline.history(run) if "val/predictions/filenames" in h]

    classes = sorted(p.name for p in (small_root / "val").iterdir())
    val_files = [(path, c) for c in classes for path in sorted((small_root / "val" / c).glob("*.png"))]
    pre = Preprocessing(**wandb_offline.config(run)["preprocessing"])
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    transform = eval_transform(pre)
    # What the network saw, back on the 0-255 scale.
    expected = np.stack([((transform(load_rgb(p)) * std + mean) * 255).permute(1, 2, 0).numpy() for p, _ in val_files])

    captions = report["val/predictions/captions"]
    assert report["val/predictions/count"] == len(captions) == 16
    matched, pairs = [], []
    for name, caption in zip(report["val/predictions/filenames"], captions):
        picture = np.asarray(Image.open(files / name).convert("RGB")).astype(np.float32)
        assert picture.shape == (32, 32, 3) and picture.max() > 100 and len(np.unique(picture)) > 10, caption
        diff = np.abs(expected - picture).reshape(len(val_files), -1).max(1)
        index = int(diff.argmin())
        assert diff[index] <= 1, f"{name} ({caption}) is no validation image: nearest differs by {diff[index]}"
        pred, true = caption.removeprefix("pred ").split(" / true ")
        assert true == val_files[index][1], caption
        matched.append(index)
        pairs.append((true, pred))
    assert len(set(matched)) == 16  # no image twice
    assert {true for true, _ in pairs} == set(classes)  # 16 samples over 10 classes: every class shows
    assert max(matched) - min(matched) > len(val_files) * 0.8  # from the start to the end of the split

    table = json.loads((files / report["val/confusion_matrix_table/path"]).read_text())
    assert table["columns"] == ["true", "predicted", "count"]
    cells = {(true, pred): count for true, pred, count in table["data"]}
    assert len(cells) == len(table["data"]) and all(count > 0 for count in cells.values())
    assert sum(cells.values()) == len(val_files) == 71
    for c in classes:  # each row of the matrix holds that class's images
        assert sum(n for (true, _), n in cells.items() if true == c) == sum(label == c for _, label in val_files)
    assert set(pairs) <= set(cells)  # the samples' predictions are among the cells
    assert report["val/confusion_matrix/_type"] == "image-file"
    assert Image.open(files / report["val/confusion_matrix/path"]).size[0] > 300
