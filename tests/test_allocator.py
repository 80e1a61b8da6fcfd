import sys

import pytest

from fastadapt.algorithms import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_glibc_accepts_the_settings_at_import():
    assert allocator.KEPT is True
    assert allocator.keep_freed_memory() is True


def test_opt_out_by_environment(monkeypatch):
    monkeypatch.setenv("FASTADAPT_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is False
