"""Progressive learning (`--stages`) and evaluation sizes (`--data.eval_image_size`,
`--data.extra_eval_sizes`): the plan, the data module, and the real CLI."""

import csv
import importlib.util
import json
import math
import os

import pytest
import torch
from cli_helpers import CSV, ROOT, TINY, run_cli, train_losses
from PIL import Image
from probes import read_input_sizes

from effnet_lightning.data.datamodule import ImageFolderDataModule
from effnet_lightning.data.stages import ProgressivePlan

FINAL = {"randaugment": 15, "mixup": 0.2, "cutmix": 0.0, "dropout": 0.3}


def test_stages_grow_the_size_and_the_ramped_regularisers_to_the_runs_own_values():
    schedule = ProgressivePlan(count=4, start=0.5, ramp=("randaugment", "mixup", "dropout"))
    stages = [schedule.stage(epoch, 8, 224, FINAL) for epoch in range(8)]
    assert [s.index for s in stages] == [0, 0, 1, 1, 2, 2, 3, 3]
    # EfficientNetV2: size ibase + (size - ibase) x (s + 1) / S with ibase = size x start
    assert [s.image_size for s in stages[::2]] == [140, 168, 196, 224]
    assert [s.randaugment_magnitude for s in stages[::2]] == [5, 8, 12, 15]
    assert [s.mixup_alpha for s in stages[::2]] == pytest.approx([0, 0.0667, 0.1333, 0.2], abs=1e-4)
    assert [s.dropout for s in stages[::2]] == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-4)
    assert {s.cutmix_alpha for s in stages} == {0.0}  # off stays off
    # a regulariser left out of the ramp keeps its final value throughout
    fixed_dropout = ProgressivePlan(count=4, ramp=("mixup",)).stage(0, 8, 224, FINAL)
    assert fixed_dropout.dropout == 0.3 and fixed_dropout.randaugment_magnitude == 15
    # a final value below the ramp's start is not exceeded
    assert ProgressivePlan(count=2).stage(0, 4, 64, {**FINAL, "dropout": 0.05}).dropout == 0.05
    # one stage: the plain run
    assert ProgressivePlan(count=1).stage(3, 8, 224, FINAL).image_size == 224
    # uneven epochs: near-equal shares, the last stage at the full size
    assert [ProgressivePlan(count=3).index(e, 10) for e in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "stage 2 of 4: 168 px, dropout 0.167" in stages[2].describe(("dropout",))


def test_schedule_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="count >= 1 and 0 < start <= 1"):
        ProgressivePlan(count=0)
    with pytest.raises(ValueError, match="unknown \\['blur'\\]: choose from randaugment, mixup, cutmix, dropout"):
        ProgressivePlan(count=2, ramp=("blur",))


def test_evaluation_sizes_are_apart_from_the_training_size_and_keep_the_crop_fraction(small_root):
    dm = ImageFolderDataModule(
        root=str(small_root), image_size=48, eval_image_size=56, extra_eval_sizes=[40, 56, 72], num_workers=0
    )
    dm.setup("fit")
    assert dm.train_size == 48 and dm.preprocessing.crop_size == 56 and dm.extra_eval_sizes == [40, 72]
    assert dm.preprocessing.resize_size == math.floor(56 / 0.875)
    train = next(iter(dm.train_dataloader()))[0]
    val = [next(iter(loader))[0] for loader in dm.val_dataloader()]
    assert train.shape[-1] == 48 and [v.shape[-1] for v in val] == [56, 40, 72]
    assert next(iter(dm.test_dataloader()))[0].shape[-1] == 56
    # without eval_image_size: the training size (today's behaviour), or the weights' size
    assert ImageFolderDataModule(root=str(small_root), image_size=48).preprocessing.crop_size == 48
    assert ImageFolderDataModule(root=str(small_root)).preprocessing.crop_size == 224


def test_inside_a_stage_the_data_module_hands_back_the_same_training_loader(small_root):
    dm = ImageFolderDataModule(root=str(small_root), image_size=48, batch_size=8, num_workers=0, mixup_alpha=0.4)
    dm.setup("fit")
    stages = ProgressivePlan(count=2)
    final = {"randaugment": 9, "mixup": 0.4, "cutmix": 0.0, "dropout": 0.2}
    epoch = {"now": 0}
    dm.stage_at = lambda _: stages.stage(epoch["now"], 4, dm.train_size, final)
    loaders = []
    for epoch["now"] in range(4):
        loaders.append(dm.train_dataloader())
    assert loaders[0] is loaders[1] and loaders[2] is loaders[3] and loaders[1] is not loaders[2]
    first, last = next(iter(loaders[0])), next(iter(loaders[3]))
    assert first[0].shape[-1] == 36 and first[1].ndim == 1  # stage 0: mixup alpha 0, plain labels
    assert last[0].shape[-1] == 48 and last[1].shape == (8, 10)
    assert torch.allclose(last[1].sum(1), torch.ones(8))  # mixed targets
    assert dm.val_dataloader() is dm.val_dataloader()


def validation_metrics(cwd) -> dict[str, float]:
    """The metrics of the newest CSV log under cwd/runs (one validate run)."""
    newest = max((cwd / "runs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows = list(csv.DictReader(newest.open()))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v}


def sizes_by_step(records: list[dict], stage: str = "train") -> dict[int, int]:
    return {r["step"]: r["size"][0] for r in records if r["stage"] == stage}


STAGED = [
    *TINY,
    *CSV,
    "--data.image_size",
    "48",
    "--trainer.limit_train_batches",
    "4",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
    "--stages.count",
    "3",
    "--trainer.max_epochs",
    "6",
    "--trainer.callbacks+=probes.InputSizeProbe",
]


@pytest.mark.slow
def test_a_progressive_fit_follows_its_stages_and_resumes_inside_a_stage_at_its_size(tmp_path, small_root):
    args = ["fit", "--data.root", small_root, *STAGED]
    (tmp_path / "whole").mkdir()
    whole = run_cli(args, tmp_path / "whole", env={**os.environ, "PROBE_FILE": str(tmp_path / "whole.jsonl")})
    # 3 stages of 2 epochs, 4 steps each: 32, 40, then 48 px (24 + 24 x (s + 1) / 3); validation at 48
    records = read_input_sizes(tmp_path / "whole.jsonl")
    assert sizes_by_step(records) == {step: [32, 40, 48][step // 8] for step in range(24)}
    assert {r["size"][0] for r in records if r["stage"] == "val"} == {48}
    assert "epoch 2: stage 2 of 3: 40 px, dropout 0.15" in whole.stderr
    logged = train_losses(tmp_path / "whole", metric="train/image_size")
    assert logged == {step: float([32, 40, 48][step // 8]) for step in range(24)}

    # stopped at the end of epoch 2 (the first of stage 2's two epochs), resumed from last.ckpt
    (tmp_path / "split").mkdir()
    stop = {**os.environ, "PROBE_FILE": str(tmp_path / "split.jsonl"), "PROBE_EPOCH": "2"}
    run_cli([*args, "--trainer.callbacks+=probes.StopAfterEpoch"], tmp_path / "split", env=stop)
    assert max(sizes_by_step(read_input_sizes(tmp_path / "split.jsonl"))) == 11
    (tmp_path / "split.jsonl.0").unlink()
    run_cli([*args, "--ckpt_path", "last"], tmp_path / "split", env=stop)
    resumed = sizes_by_step(read_input_sizes(tmp_path / "split.jsonl"))
    assert resumed == {step: 40 if step < 16 else 48 for step in range(12, 24)}
    full, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert sorted(split) == list(range(24))
    assert [split[s] for s in range(24)] == pytest.approx([full[s] for s in range(24)], abs=1e-6)
    assert len({round(full[s], 4) for s in range(12, 24)}) == 12


@pytest.mark.slow
def test_two_process_ddp_trains_every_step_at_one_size_across_a_stage_change(tmp_path, small_root):
    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    args = ["fit", "--data.root", small_root, *STAGED, *ddp, "--stages.count", "2", "--trainer.max_epochs", "2"]
    run_cli(args, tmp_path, env={**os.environ, "PROBE_FILE": str(tmp_path / "probe.jsonl")})
    ranks = [sizes_by_step(read_input_sizes(tmp_path / "probe.jsonl", rank)) for rank in (0, 1)]
    # 100 images over 2 processes, batch 8: 6 steps per epoch, limited to 4
    assert ranks[0] == ranks[1] == {step: 36 if step < 4 else 48 for step in range(8)}


@pytest.mark.slow
def test_extra_evaluation_sizes_equal_validating_at_each_size_alone_and_checkpoints_keep_the_sizes(
    tmp_path, small_root
):
    sizes = ["--data.image_size", "48", "--data.eval_image_size", "56", "--data.extra_eval_sizes", "[40, 72]"]
    fit = [*TINY, *CSV, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--model.warmup_epochs", "0"]
    # A random head and BatchNorm statistics that follow the last batches: after these few steps the
    # logits depend on the input, so sizes give different numbers.
    fit += ["--model.zero_init_head", "false", "--model.model_options", '{"bn_momentum": 0.5}']
    run_cli(["fit", "--data.root", small_root, *fit, *sizes], tmp_path)
    best = json.loads((tmp_path / "runs" / "latest_fit.json").read_text())["best_model_path"]
    ckpt = torch.load(tmp_path / best, weights_only=True)
    assert ckpt["image_sizes"] == {"train": 48, "eval": 56}
    assert ckpt["hyper_parameters"]["preprocessing"]["crop_size"] == 56

    check = ["--data.root", small_root, *TINY, *CSV, "--ckpt_path", best]
    run_cli(["validate", *check, *sizes[2:]], tmp_path)
    together = validation_metrics(tmp_path)
    alone = {}
    for size in (40, 56, 72):
        probe = {**os.environ, "PROBE_FILE": str(tmp_path / f"val{size}.jsonl")}
        validate = ["validate", *check, "--data.eval_image_size", size, "--trainer.callbacks+=probes.InputSizeProbe"]
        run_cli(validate, tmp_path, env=probe)
        alone[size] = validation_metrics(tmp_path)
        assert {r["size"][0] for r in read_input_sizes(tmp_path / f"val{size}.jsonl")} == {size}
    print(f"together {together}, alone {alone}")
    for size in (40, 72):
        for metric in ("acc", "loss"):
            assert together[f"val/{metric}@{size}"] == pytest.approx(alone[size][f"val/{metric}"], abs=1e-6)
    assert together["val/loss"] == pytest.approx(alone[56]["val/loss"], abs=1e-6)
    losses = [together["val/loss@40"], together["val/loss"], together["val/loss@72"]]
    assert len({round(loss, 5) for loss in losses}) == 3  # three sizes, three different results

    # test without sizes: at the recorded evaluation size, although TINY types image_size 64
    probe = {**os.environ, "PROBE_FILE": str(tmp_path / "test.jsonl")}
    test = ["test", "--data.root", small_root, *CSV, "--data.num_workers", "0", "--ckpt_path", best]
    run_cli([*test, "--trainer.callbacks+=probes.InputSizeProbe"], tmp_path, env=probe)
    assert {r["size"][0] for r in read_input_sizes(tmp_path / "test.jsonl")} == {56}


def _benchmark():
    spec = importlib.util.spec_from_file_location("progressive_benchmark", ROOT / "benchmarks" / "progressive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_plots_every_run_and_measures_time_to_the_fixed_runs_best(tmp_path):
    bench = _benchmark()

    def curve(seconds, accs):
        return [
            {"epoch": i, "seconds": s, "val/acc": a, "val/acc@72": a + 0.01}
            for i, (s, a) in enumerate(zip(seconds, accs))
        ]

    results = {
        "fixed": {"0": curve([60, 120, 180], [0.3, 0.6, 0.9]), "1": curve([60, 120, 180], [0.2, 0.8, 0.7])},
        "progressive": {"0": curve([40, 80, 120], [0.2, 0.9, 0.95]), "1": curve([40, 80, 120], [0.1, 0.5, 0.7])},
    }
    summary = bench.summarise(results)
    assert summary["fixed"]["median_best_val_acc"] == pytest.approx(0.85)
    # seed 0: the fixed best (0.9) at 180 s, progressive reaches it at 80 s; seed 1: 0.8 never reached
    assert summary["progressive"]["seconds_to_fixed_best"] == {"0": 80, "1": None}
    assert summary["progressive"]["speedup_to_fixed_best"] == [pytest.approx(180 / 80)]
    assert summary["fixed"]["eval_size_gain_last_epoch"]["val/acc@72"] == pytest.approx(0.01)
    fig = bench.plot(results, tmp_path / "curves.png")
    lines = {line.get_gid(): line.get_xydata().ravel().tolist() for line in fig.axes[0].lines}
    assert lines["progressive-seed0"] == pytest.approx([40 / 60, 0.2, 80 / 60, 0.9, 2.0, 0.95])
    assert lines["fixed-seed1"] == pytest.approx([1.0, 0.2, 2.0, 0.8, 3.0, 0.7])
    assert len(lines) == 4 and Image.open(tmp_path / "curves.png").size == (700, 450)
