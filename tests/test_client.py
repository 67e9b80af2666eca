"""The HTTP client's transport rules, against a scripted transport (no server): what is retried, how
long it waits, and what `check` says about an endpoint before a batch."""

from __future__ import annotations

import httpx
import pytest

import serving.client as client_module
from serving.client import MAX_BACKOFF_S, ServiceError, SesamClient


def scripted(handler) -> SesamClient:
    client = SesamClient("http://sesam.test", retries=8)
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client


def test_backoff_is_capped_and_the_last_status_kept(monkeypatch) -> None:
    """Eight retries of a 503 wait at most MAX_BACKOFF_S each (they used to double without bound:
    0.5 ... 64 s here, about 6 days at --retries 20), a Retry-After wait is not carried over to
    later tries, and the error after the last try keeps the status."""
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    answers = iter([httpx.Response(503, headers={"retry-after": "7"})] + [httpx.Response(503)] * 8)
    client = scripted(lambda request: next(answers))
    with pytest.raises(ServiceError) as failed:
        client.post("/info")
    assert failed.value.status == 503
    assert slept == [7.0, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF_S, MAX_BACKOFF_S]


def test_an_answer_that_is_not_json_is_a_service_error() -> None:
    client = scripted(lambda request: httpx.Response(200, text="<html>hello</html>"))
    with pytest.raises(ServiceError, match="answered no JSON: not a sesam service"):
        client.post("/refine")


@pytest.mark.parametrize(
    ("url", "answers", "message"),
    [
        ("127.0.0.1:3000", {}, "give the URL with its scheme, e.g. http://127.0.0.1:3000"),
        ("http://sesam.test", {"/readyz": 503}, "not ready (GET /readyz answered 503)"),
        ("http://sesam.test", {"/info": 401}, "the API key is missing or wrong"),
        ("http://sesam.test", {"/info": 501}, "not a sesam service (POST /info answered 501)"),
        ("http://sesam.test", {"/info": 200}, "not a sesam service (POST /info answered 200)"),
    ],
)
def test_check_says_why_an_endpoint_cannot_serve_a_batch(url: str, answers: dict, message: str) -> None:
    """Before a batch, one reason: no scheme, not ready, the key refused, or not a sesam service (a
    wrong key used to pass the ready check and fail every image with a 401)."""

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.get(request.url.path, 200)
        if request.url.path == "/info" and status == 401:
            return httpx.Response(
                401, json={"error": {"code": "unauthorized", "message": "missing or wrong API key"}}
            )
        return httpx.Response(status, json={"other": "service"} if request.url.path == "/info" else {})

    client = scripted(handler)
    client.url = url
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.check()


def test_check_passes_a_sesam_service() -> None:
    client = scripted(
        lambda r: httpx.Response(200, json={"backend": "classical"} if r.url.path == "/info" else {})
    )
    client.check()


def test_an_empty_endpoint_is_an_error_not_an_in_process_run(tmp_path, capsys) -> None:
    """`--endpoint "$URL"` with URL unset used to run in-process and exit 0."""
    from sesam.cli import main

    argv = ["refine", "--images", str(tmp_path), "--weak", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--endpoint", ""]) == 2
    assert "--endpoint is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
