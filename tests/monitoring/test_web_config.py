"""monitoring/auth/web_config.py: the web config files Prometheus and Alertmanager check passwords
against, and the password files Prometheus sends, written from the environment."""

from __future__ import annotations

import stat
import subprocess
import sys

import bcrypt
import pytest
import yaml

from tests.monitoring.native import WEB_CONFIG_SCRIPT
from tests.support.processes import require_tool, subprocess_env

PASSWORDS = {
    "PROMETHEUS_PASSWORD": "prometheus-secret-123",
    "ALERTMANAGER_PASSWORD": "alertmanager.secret_456",
    "METRICS_API_KEY": "metrics-key-for-the-scrape",
}


def write(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WEB_CONFIG_SCRIPT), str(tmp_path)], env=subprocess_env(**env),
                          capture_output=True, text=True)  # fmt: skip


def test_each_service_gets_one_bcrypt_user_and_its_password_file(tmp_path):
    result = write(tmp_path, **PASSWORDS)
    assert result.returncode == 0, result.stderr
    for service, password in (
        ("prometheus", "prometheus-secret-123"),
        ("alertmanager", "alertmanager.secret_456"),
    ):
        users = yaml.safe_load((tmp_path / f"{service}-web.yml").read_text())["basic_auth_users"]
        assert list(users) == [service]
        assert users[service].startswith("$2b$10$")
        assert bcrypt.checkpw(password.encode(), users[service].encode())
        assert (tmp_path / f"{service}.password").read_text() == password
        for name in (f"{service}-web.yml", f"{service}.password"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o444, name


def test_the_files_are_what_promtool_accepts_and_a_second_start_rewrites_them(tmp_path):
    assert write(tmp_path, **PASSWORDS).returncode == 0
    first = (tmp_path / "prometheus-web.yml").read_text()
    assert write(tmp_path, **PASSWORDS).returncode == 0  # the read-only files are replaced, not refused
    assert (tmp_path / "prometheus-web.yml").read_text() != first  # a fresh salt
    checked = subprocess.run([require_tool("promtool"), "check", "web-config", str(tmp_path / "prometheus-web.yml")],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "password", ["", "short", "has spaces in it", "with@at-sign-and:colon", 'quote"d-password']
)
def test_a_missing_short_or_url_unsafe_password_is_refused_by_name(tmp_path, password):
    result = write(tmp_path, **(PASSWORDS | {"PROMETHEUS_PASSWORD": password}))
    assert result.returncode == 2
    assert "PROMETHEUS_PASSWORD" in result.stderr and not (tmp_path / "prometheus-web.yml").exists()


def test_prometheus_gets_the_api_metrics_key_and_the_api_its_hash(tmp_path):
    from api.access import KeyFile

    assert write(tmp_path, **PASSWORDS).returncode == 0
    assert (
        tmp_path / "api-metrics.key"
    ).read_text() == "metrics-key-for-the-scrape"  # no newline: a bearer token
    hashes = KeyFile(tmp_path / "metrics-api-keys.txt")  # read as the api reads METRICS_API_KEYS_FILE
    assert hashes.admits("metrics-key-for-the-scrape")
    assert not hashes.admits("prometheus-secret-123")
    for name in ("api-metrics.key", "metrics-api-keys.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o444, name


def test_a_missing_metrics_key_is_refused_by_name(tmp_path):
    result = write(tmp_path, **(PASSWORDS | {"METRICS_API_KEY": ""}))
    assert result.returncode == 2 and "METRICS_API_KEY" in result.stderr
