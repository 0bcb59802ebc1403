"""Kaggle credentials: none, a kaggle.json readable by others, environment variables, an API token; secrets
never printed, logged or embedded in a kernel."""
import json
import logging

import pytest

from fake_kaggle import (  # noqa: F401  (fixtures)
    FAKE_KEY, FAKE_TOKEN, FAKE_USER, fake_kaggle, isolate_kaggle_env, kaggle_env, write_kaggle_json,
)
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.errors import KaggleError
from segkit.kaggle.api import KaggleClient
from segkit.kaggle.bundle import build_kernel
from segkit.kaggle.credentials import find_credentials

KERNEL = f"{FAKE_USER}/segkit-cred-test"


@pytest.fixture
def no_creds(fake_kaggle, monkeypatch, tmp_path):
    """The real client pointed at the fake server, and no credentials anywhere."""
    return isolate_kaggle_env(monkeypatch, tmp_path, fake_kaggle.url)


def test_no_credentials_is_a_clear_error_not_an_exit(no_creds, fake_kaggle, capsys):
    with pytest.raises(KaggleError) as info:
        KaggleClient().status(KERNEL)
    text = str(info.value)
    assert "no Kaggle credentials found" in text
    assert "KAGGLE_API_TOKEN" in text and "kaggle.json" in text and "KAGGLE_USERNAME" in text
    assert main(["kernel", "status", KERNEL]) == 1
    err = capsys.readouterr().err
    assert "no Kaggle credentials found" in err and "Traceback" not in err
    assert fake_kaggle.received == []


def test_incomplete_or_broken_kaggle_json_names_the_file(no_creds, monkeypatch):
    path = no_creds / "kaggle.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(KaggleError, match=f"{path}: not valid JSON"):
        find_credentials()
    path.write_text(json.dumps({"username": FAKE_USER}))
    with pytest.raises(KaggleError, match="KAGGLE_KEY .* is missing"):
        find_credentials()
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)  # the environment completes the file, as in the client
    assert find_credentials().username == FAKE_USER


def test_group_readable_kaggle_json_warns_and_still_works(no_creds, fake_kaggle, caplog):
    path = write_kaggle_json(no_creds, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="segkit.kaggle"):
        st = KaggleClient().status(KERNEL)
    assert st.state == "COMPLETE"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "chmod 600" in w for w in warnings)
    assert all(FAKE_KEY not in w for w in warnings)
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="segkit.kaggle"):
        find_credentials()
    assert caplog.records == []


def test_username_and_key_from_the_environment(no_creds, fake_kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", FAKE_USER)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    creds = find_credentials()
    assert (creds.method, creds.username, creds.source) == ("key", FAKE_USER, "KAGGLE_USERNAME/KAGGLE_KEY")
    assert FAKE_KEY not in repr(creds)
    KaggleClient().status(KERNEL)
    import base64

    (call,) = fake_kaggle.calls("GetKernelSessionStatus")
    assert call.headers["Authorization"] == "Basic " + base64.b64encode(f"{FAKE_USER}:{FAKE_KEY}".encode()).decode()


def test_api_token_is_sent_as_bearer(no_creds, fake_kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)
    assert find_credentials().method == "token"
    client = KaggleClient()
    assert client.status(KERNEL).state == "COMPLETE"
    assert client.username == "tokenuser"
    introspect = fake_kaggle.calls("IntrospectToken")
    assert introspect and introspect[-1].json == {"token": FAKE_TOKEN}
    (call,) = fake_kaggle.calls("GetKernelSessionStatus")
    assert call.headers["Authorization"] == f"Bearer {FAKE_TOKEN}"


def test_an_invalid_token_is_rejected_clearly(no_creds, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_not_the_right_token")
    with pytest.raises(KaggleError) as info:
        KaggleClient().status(KERNEL)
    assert "rejected the credentials" in str(info.value)
    assert "KGAT_not_the_right_token" not in str(info.value)


def test_token_file_in_home(no_creds, tmp_path, fake_kaggle):
    token = tmp_path / "home" / ".kaggle" / "access_token"
    token.parent.mkdir()
    token.write_text(FAKE_TOKEN + "\n")
    token.chmod(0o600)
    creds = find_credentials()
    assert (creds.method, creds.source) == ("token", str(token))
    KaggleClient().status(KERNEL)
    assert fake_kaggle.calls("GetKernelSessionStatus")[0].headers["Authorization"] == f"Bearer {FAKE_TOKEN}"


def test_secrets_are_never_printed(kaggle_env, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("VERBOSE", "1")  # the client would print the Authorization header
    cfg = config_from_dict({"name": "cred", "kaggle": {"owner": FAKE_USER, "slug": "segkit-cred-test"}})
    built = build_kernel(cfg, "segkit-cred-test", out_dir=tmp_path / "build")
    with caplog.at_level(logging.DEBUG):
        assert main(["kernel", "push", str(built.folder)]) == 0
        assert main(["kernel", "status", KERNEL]) == 0
    out, err = capsys.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    import base64

    basic = base64.b64encode(f"{FAKE_USER}:{FAKE_KEY}".encode()).decode()
    for secret in (FAKE_KEY, basic):
        assert secret not in out and secret not in err and secret not in logged
    assert FAKE_KEY not in built.code_file.read_text()


def test_build_refuses_to_embed_a_secret(kaggle_env, tmp_path):
    cfg = config_from_dict({"name": "cred", "data": {"root": f"/data/{FAKE_KEY}"},
                            "kaggle": {"owner": FAKE_USER, "slug": "segkit-cred-test"}})
    with pytest.raises(KaggleError) as info:
        build_kernel(cfg, "segkit-cred-test", out_dir=tmp_path / "build")
    assert "would contain the secret from" in str(info.value) and FAKE_KEY not in str(info.value)
    assert not (tmp_path / "build" / "segkit-cred-test").exists()
