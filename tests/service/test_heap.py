"""service/heap.py: the server fixes malloc's mmap threshold at startup, so its heap does not grow edit by edit."""
from __future__ import annotations

import pytest
from service_support import serving

import service.main
from service.heap import fix_mmap_threshold
from service.settings import Settings


def test_the_threshold_is_set_on_glibc_and_zero_leaves_it():
    assert fix_mmap_threshold(128 * 1024)  # this machine's C library is glibc
    assert not fix_mmap_threshold(0)


def test_the_server_fixes_it_from_its_settings_before_loading(settings, monkeypatch: pytest.MonkeyPatch):
    seen = []
    monkeypatch.setattr(service.main, "fix_mmap_threshold", lambda n: seen.append(n) or True)
    with serving(settings.model_copy(update={"mmap_threshold": 65536})) as client:
        assert client.get("/ready").status_code == 200
    assert seen == [65536]
    assert Settings.model_fields["mmap_threshold"].default == 128 * 1024
    with pytest.raises(ValueError):
        Settings(mmap_threshold=-1)
