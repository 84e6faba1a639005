"""Post-deploy verification against a real HTTP server on loopback."""

from __future__ import annotations

from stages.ci.deploy_check import Expected, check_once, verify
from tests.ci.fake_service import ServiceState, fake_service
from tests.support.processes import free_port

EXPECTED = Expected(name="adult-income", version="3")


def _verify(url: str, expected: Expected = EXPECTED, attempts: int = 5):
    """A fake clock: each poll costs one second, so `attempts` polls fit in the deadline, with no waiting."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return verify(url, expected, timeout=attempts - 1, interval=1.0, sleep=sleep, clock=lambda: now[0])


def test_a_ready_service_with_the_expected_model_passes():
    with fake_service(ServiceState()) as url:
        outcome = _verify(url + "/")
    assert outcome.ok, outcome.message
    assert outcome.message == "ready and serving adult-income v3"


def test_an_integer_version_matches_its_text():
    """MLflow gives an int version over SQLite and a str over REST."""
    with fake_service(ServiceState(model={"name": "adult-income", "version": 3})) as url:
        assert check_once(url, EXPECTED).ok


def test_verification_waits_until_the_service_turns_ready():
    state = ServiceState(not_ready_for=3)
    with fake_service(state) as url:
        outcome = _verify(url, attempts=5)
    assert outcome.ok, outcome.message
    assert state.not_ready_for == 0


def test_a_service_that_never_turns_ready_fails_with_its_reason():
    with fake_service(ServiceState(ready=False)) as url:
        outcome = _verify(url)
    assert not outcome.ok
    assert outcome.message == "/ready answered 503: {'detail': 'broken image'}"


def test_the_wrong_model_version_fails():
    with fake_service(ServiceState(model={"name": "adult-income", "version": "2"})) as url:
        outcome = _verify(url)
    assert not outcome.ok
    assert outcome.message == "serving adult-income v2, expected adult-income v3"


def test_the_wrong_model_name_fails():
    with fake_service(ServiceState(model={"name": "other", "version": "3"})) as url:
        assert not _verify(url).ok


def test_nothing_listening_fails_without_raising():
    outcome = _verify(f"http://127.0.0.1:{free_port()}", attempts=2)
    assert not outcome.ok
    assert outcome.message.startswith("/ready answered nothing")


def test_the_deploy_api_key_is_sent_when_the_service_requires_one(monkeypatch):
    with fake_service(ServiceState(api_key="the-deploy-key")) as url:
        monkeypatch.delenv("DEPLOY_API_KEY", raising=False)
        refused = _verify(url, attempts=1)
        monkeypatch.setenv("DEPLOY_API_KEY", "the-deploy-key")
        admitted = _verify(url, attempts=1)
    assert not refused.ok and "401" in refused.message
    assert admitted.ok, admitted.message
