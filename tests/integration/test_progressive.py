"""Progressive learning (`--stages`) and evaluation sizes (`--data.eval_image_size`,
`--data.extra_eval_sizes`): the plan, the data module, and the real CLI."""

import csv
import json
import os

import pytest
import torch

from tests.helpers.cli import CSV, TINY, run_cli, train_losses
from tests.helpers.probes import read_input_sizes


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
    "--trainer.callbacks+=tests.helpers.probes.InputSizeProbe",
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
    run_cli([*args, "--trainer.callbacks+=tests.helpers.probes.StopAfterEpoch"], tmp_path / "split", env=stop)
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
        validate = [
            "validate",
            *check,
            "--data.eval_image_size",
            size,
            "--trainer.callbacks+=tests.helpers.probes.InputSizeProbe",
        ]
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
    run_cli([*test, "--trainer.callbacks+=tests.helpers.probes.InputSizeProbe"], tmp_path, env=probe)
    assert {r["size"][0] for r in read_input_sizes(tmp_path / "test.jsonl")} == {56}
