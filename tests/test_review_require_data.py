"""Issue 25: tests that read the shared data fail, naming the folder, when it is absent (no skips)."""

from __future__ import annotations

import pytest

import tests.conftest as conftest


def test_require_data_returns_the_shared_folder() -> None:
    assert conftest.require_data("camvid") == conftest.DATA / "camvid"


@pytest.mark.parametrize("layout", ["absent", "empty"])
def test_require_data_fails_loudly_when_the_folder_is_missing(tmp_path, monkeypatch, layout) -> None:
    monkeypatch.setattr(conftest, "DATA", tmp_path / "shared" / "data")
    if layout == "empty":
        (tmp_path / "shared" / "data" / "pennfudan").mkdir(parents=True)
    with pytest.raises(pytest.fail.Exception) as failed:
        conftest.require_data("pennfudan")
    message = str(failed.value)
    assert str(tmp_path / "shared" / "data" / "pennfudan") in message
    assert "Penn-Fudan pedestrian database" in message and "never download" in message
