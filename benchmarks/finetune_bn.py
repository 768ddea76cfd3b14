"""Why a fine-tuned network scores what it scores: its BatchNorm statistics, measured three ways.

    python benchmarks/finetune_bn.py --ckpt runs/.../last.ckpt --data.root DIR [--batch-size 32]

For one checkpoint and the validation split of its data, val/acc
- `stored`: in evaluation mode, with the running statistics the checkpoint holds (what
  validate / test report);
- `recalibrated`: in evaluation mode, with the running statistics recomputed as exact averages
  over the training images under the evaluation transform;
- `batch`: in training mode (each shuffled batch normalised by its own statistics, as
  training sees it), dropout and stochastic depth off;
and the largest relative distance between the stored and the recalibrated running means. A
large gap between `stored` and the other two says the running statistics no longer describe
the weights they sit beside: the network learned in train mode is not the one evaluated.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.folders import ImageFileDataset
from effnet_lightning.data.transforms import eval_transform
from effnet_lightning.models.state_dicts import read_checkpoint
from effnet_lightning.training.module import EfficientNetModule


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def accuracy(model: nn.Module, loader: DataLoader, batch_stats: bool = False) -> float:
    """Top-1 in evaluation mode; with `batch_stats`, on a copy whose BatchNorm layers normalise
    each batch by its own statistics (training mode), everything else in evaluation mode."""
    model = copy.deepcopy(model).eval() if batch_stats else model.eval()
    for bn in batchnorms(model) if batch_stats else ():
        bn.train()
    correct = total = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += int((model(images).argmax(1) == targets).sum())
            total += len(targets)
    return correct / total


def recalibrate(model: nn.Module, loader: DataLoader) -> None:
    """Running statistics = exact averages over the loader's images (momentum None), with
    dropout and stochastic depth off."""
    bns = batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data.root", dest="root", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    checkpoint = read_checkpoint(args.ckpt)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = EfficientNetModule(**{**hparams, "weights": None})
    module.load_state_dict(checkpoint["state_dict"])
    model = module.model.float().to(memory_format=torch.contiguous_format)
    data = ImageFolderDataModule(
        root=args.root,
        batch_size=args.batch_size,
        num_workers=0,
        class_names=hparams["class_names"],
        preprocessing=hparams["preprocessing"],
    )
    data.setup("fit")
    transform = eval_transform(data.preprocessing)

    def loader(split: str, shuffle: bool = False) -> DataLoader:
        # Shuffled (seeded) for batch statistics: a sorted split's batches would each hold one class.
        generator = torch.Generator().manual_seed(0)
        dataset = ImageFileDataset(data.splits[split], transform)
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle, generator=generator)

    stored_means = [bn.running_mean.clone() for bn in batchnorms(model)]
    result = {
        "stored": accuracy(model, loader("val")),
        "batch": accuracy(model, loader("val", shuffle=True), batch_stats=True),
    }
    recalibrate(model, loader("train"))
    result["recalibrated"] = accuracy(model, loader("val"))
    new_means = [bn.running_mean for bn in batchnorms(model)]
    result["max_relative_mean_shift"] = max(
        float((new - old).norm() / new.norm().clamp(min=1e-8)) for old, new in zip(stored_means, new_means)
    )
    print(json.dumps({"checkpoint": args.ckpt, **{k: round(v, 4) for k, v in result.items()}}))
    return result


if __name__ == "__main__":
    main()
