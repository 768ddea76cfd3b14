"""The shard benchmark's results as the docs quote them."""

import json

from tests.helpers.cli import ROOT


def test_the_docs_quote_the_shard_benchmarks_results():
    results = json.loads((ROOT / "docs" / "shards" / "results.json").read_text())
    page = (ROOT / "docs" / "running-at-scale.md").read_text()
    setup = f"| {results['folder_setup_s']:.1f} s | {results['shards_setup_s']:.3f} s | "
    setup += f"{results['folder_setup_s'] / results['shards_setup_s']:.0f}x shorter |"
    start = f"| {results['folder_first_step_s']:.1f} s | {results['shards_first_step_s']:.1f} s | "
    start += f"{results['folder_first_step_s'] / results['shards_first_step_s']:.1f}x shorter |"
    loader = f"| {results['folder_loader_img_s']:.0f} img/s | {results['shards_loader_img_s']:.0f} img/s | "
    loader += f"{results['shards_loader_img_s'] / results['folder_loader_img_s']:.2f}x |"
    for row in (setup, start, loader, f"| {results['prepare_s']:.0f} s |"):
        assert row in page, row
    assert results["folder_setup_s"] / results["shards_setup_s"] >= 10  # the target
    assert results["files"] == 100_000 and results["folder_train_images"] == results["shards_train_images"]
