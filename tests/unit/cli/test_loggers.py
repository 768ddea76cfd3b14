"""Where W&B settings come from: explicit values, then W&B's environment variables, then ours; online
exactly when wandb would find credentials for the server in use. Nothing here starts a run."""

import logging
import os

import pytest

from effnet_lightning.cli.loggers import WandbLogger, resolve_wandb_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no WANDB_* / NETRC variables: no credentials anywhere."""
    for key in list(os.environ):
        if key.startswith("WANDB_") or key == "NETRC":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_netrc(home, machine, password="k" * 40):
    (home / ".netrc").write_text(f"machine {machine}\n  login user\n  password {password}\n")


def settings(environ, project=None, save_dir=None, offline=None):
    return resolve_wandb_settings(project, save_dir, offline, environ=environ)


def test_no_credentials_is_offline_with_the_defaults(home):
    assert settings({"HOME": str(home)}) == ("effnet-lightning", "runs", True)


def test_cloud_key_in_netrc_is_online_under_either_cloud_name(home):
    env = {"HOME": str(home)}
    for machine in ("api.wandb.ai", "api.forge.coreweave.com"):
        write_netrc(home, machine)
        assert settings(env)[2] is False, machine


def test_self_hosted_server_needs_a_netrc_entry_for_its_own_host(home):
    env = {"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.com"}
    write_netrc(home, "api.wandb.ai")  # a key for another server does not log in here
    assert settings(env)[2] is True
    write_netrc(home, "wandb.example.com")
    assert settings(env)[2] is False
    # with a port the machine is host:port, as `wandb login --host` writes it
    env["WANDB_BASE_URL"] = "http://localhost:8080"
    assert settings(env)[2] is True
    write_netrc(home, "localhost:8080")
    assert settings(env)[2] is False


def test_server_saved_by_wandb_login_host_is_the_one_looked_up(home):
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.example.com\n")
    write_netrc(home, "wandb.example.com")
    assert settings({"HOME": str(home)})[2] is False
    assert settings({"HOME": str(home), "WANDB_BASE_URL": "https://other.example.com"})[2] is True


def test_netrc_path_from_NETRC_and_entries_without_a_key(home):
    other = home / "elsewhere"
    other.write_text("machine wandb.example.com\n  login user\n  password secret\n")
    env = {"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.com"}
    assert settings(env)[2] is True
    assert settings({**env, "NETRC": str(other)})[2] is False
    assert resolve_wandb_settings(None, None, None, environ=env, netrc_path=other)[2] is False
    other.write_text("machine wandb.example.com\n  login user\n")  # no password: no API key
    assert settings({**env, "NETRC": str(other)})[2] is True
    other.write_text("machine wandb.example.com\n  frobnicate x\n  password k\n")  # unparsable: offline, no error
    assert settings({**env, "NETRC": str(other)})[2] is True


def test_identity_token_file_counts_when_it_exists(home):
    token = home / "token.jwt"
    env = {"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.com", "WANDB_IDENTITY_TOKEN_FILE": str(token)}
    assert settings(env)[2] is True  # named but missing
    token.write_text("eyJhbGciOi.payload.signature")
    assert settings(env)[2] is False


def test_api_key_and_wandb_mode(home):
    env = {"HOME": str(home)}
    assert settings({**env, "WANDB_API_KEY": "k" * 40})[2] is False
    write_netrc(home, "api.wandb.ai")
    assert settings({**env, "WANDB_MODE": "offline"})[2] is True
    assert settings({**env, "WANDB_MODE": "dryrun"})[2] is True
    write_netrc(home, "elsewhere")
    assert settings({**env, "WANDB_MODE": "online"})[2] is False  # asked for: wandb's to apply
    assert settings({**env, "WANDB_MODE": "offline"}, offline=False)[2] is False  # the explicit value wins
    assert settings({**env, "WANDB_API_KEY": "k" * 40}, offline=True)[2] is True


def test_project_and_folder_from_the_environment_unless_given(home):
    env = {"HOME": str(home), "WANDB_PROJECT": "theirs", "WANDB_DIR": str(home / "wb")}
    assert settings(env)[:2] == ("theirs", str(home / "wb"))
    assert settings(env, project="mine", save_dir="out")[:2] == ("mine", "out")
    assert settings({"HOME": str(home), "WANDB_PROJECT": "theirs"}, save_dir="out")[:2] == ("theirs", "out")


def test_logger_passes_the_resolved_settings_to_wandb(home, monkeypatch, caplog):
    monkeypatch.chdir(home)
    monkeypatch.setenv("WANDB_PROJECT", "theirs")
    monkeypatch.setenv("WANDB_DIR", str(home / "wb"))
    monkeypatch.setenv("WANDB_ENTITY", "team")
    with caplog.at_level(logging.INFO):
        logger = WandbLogger()  # no credentials: offline, and no run starts until it is used
    assert f"W&B: no credentials for W&B, logging offline under {home / 'wb'}/wandb" in caplog.text
    init = logger._wandb_init
    assert (init["project"], init["dir"], logger._offline) == ("theirs", str(home / "wb"), True)
    assert "entity" not in init  # wandb reads WANDB_ENTITY itself unless one is given
    assert (home / "wb").is_dir()
    logger = WandbLogger(project="mine", save_dir=str(home / "out"), entity="me")
    init = logger._wandb_init
    assert (init["project"], init["dir"], init["entity"]) == ("mine", str(home / "out"), "me")
    assert WandbLogger(dir=str(home / "alias"))._wandb_init["dir"] == str(home / "alias")
