"""The demo job's settings: applied only to the demo data, and under what the user gives."""

import yaml

from tests.helpers.cli import ROOT, print_config


def test_demo_settings_apply_only_to_the_demo_data_and_under_what_the_user_gives(tmp_path, capsys, monkeypatch):
    demo_fit = yaml.safe_load(print_config(["fit"], capsys, monkeypatch, tmp_path))
    assert demo_fit["data"]["image_size"] == 64 and demo_fit["trainer"]["max_epochs"] == 20
    assert demo_fit["model"]["lr"] == 0.002 and demo_fit["data"]["crop_scale"] == [0.6, 1.0]
    assert demo_fit["trainer"]["log_every_n_steps"] == 10  # 31 training batches an epoch
    # a chosen variant keeps its resolution on the demo data; flags win over the demo's settings
    b3 = yaml.safe_load(
        print_config(["fit", "--model.variant", "b3", "--model.lr", "0.01"], capsys, monkeypatch, tmp_path)
    )
    assert b3["data"]["image_size"] is None and b3["model"]["lr"] == 0.01 and b3["trainer"]["max_epochs"] == 20
    # the user's own data: none of the demo's settings
    own = ["fit", "--config", ROOT / "configs" / "b3.yaml", "--data.root", tmp_path]
    b3_own = yaml.safe_load(print_config(own, capsys, monkeypatch, tmp_path))
    plain = yaml.safe_load(print_config(["fit", "--data.root", tmp_path], capsys, monkeypatch, tmp_path))
    assert b3_own["data"]["image_size"] is None and b3_own["trainer"]["max_epochs"] == 100
    assert b3_own["model"]["lr"] == plain["model"]["lr"] == 0.001
    assert b3_own["data"]["crop_scale"] == plain["data"]["crop_scale"] == [0.08, 1.0]
    assert b3_own["trainer"]["log_every_n_steps"] is None and plain["trainer"]["log_every_n_steps"] is None  # 50
