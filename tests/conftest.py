"""Fixtures and hooks shared by the test modules; the shared builders are in helpers.py."""

from __future__ import annotations

import pytest
import torch

from helpers import REQUIRE_PACKAGES_ENV, missing_package, packages_required


@pytest.fixture
def one_thread():
    """torch on one thread for the test (float64 comparisons and timings of small kernels), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs_package(NAME)`` (helpers.needs_package) skips when that Debian package is missing, or
    fails under FASTADAPT_REQUIRE_SYSTEM_PACKAGES=1 (.ci/run), so CI runs every test."""
    for mark in item.iter_markers("needs_package"):
        why = missing_package(mark.args[0])
        if why and packages_required():
            pytest.fail(f"{why}; {REQUIRE_PACKAGES_ENV}=1 turns this skip into a failure", pytrace=False)
        if why:
            pytest.skip(why)
