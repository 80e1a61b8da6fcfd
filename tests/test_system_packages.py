"""Tests that need a Debian package: without it they skip, naming the install command; under
FASTADAPT_REQUIRE_SYSTEM_PACKAGES=1 (.ci/run) the same test fails, so CI runs every test."""

from __future__ import annotations

import pytest

import conftest
import helpers


class Item:
    """What the setup hook reads of a test: its needs_package marks."""

    def __init__(self, *packages: str) -> None:
        self.marks = [helpers.needs_package(p).mark for p in packages]

    def iter_markers(self, name: str):
        return (m for m in self.marks if m.name == name)


@pytest.fixture
def chromium_missing(monkeypatch):
    monkeypatch.setitem(helpers.SYSTEM_PACKAGES, "chromium", lambda: False)
    monkeypatch.setitem(helpers.SYSTEM_PACKAGES, "dataset-fashion-mnist", lambda: True)


def test_a_missing_package_skips_with_its_install_command(chromium_missing, monkeypatch):
    monkeypatch.delenv(helpers.REQUIRE_PACKAGES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs Debian's chromium: apt-get install chromium"):
        conftest.pytest_runtest_setup(Item("dataset-fashion-mnist", "chromium"))
    conftest.pytest_runtest_setup(Item("dataset-fashion-mnist"))  # present: runs


@pytest.mark.parametrize("value", ["1", "yes"])
def test_under_the_ci_variable_a_missing_package_fails(chromium_missing, monkeypatch, value):
    monkeypatch.setenv(helpers.REQUIRE_PACKAGES_ENV, value)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install chromium .*REQUIRE_SYSTEM_PACKAGES=1"):
        conftest.pytest_runtest_setup(Item("chromium"))
    monkeypatch.setenv(helpers.REQUIRE_PACKAGES_ENV, "0")  # 0 or empty: the default, skip
    with pytest.raises(pytest.skip.Exception):
        conftest.pytest_runtest_setup(Item("chromium"))


def test_every_package_the_tests_name_has_a_presence_check():
    assert set(helpers.SYSTEM_PACKAGES) == {
        "dataset-fashion-mnist",
        "chromium",
        "fonts-noto-core",
        "fonts-noto-color-emoji",
        "ruby-gemojione",
        "postgresql",
    }
    with pytest.raises(KeyError, match="no presence check for the Debian package 'chromium-driver'"):
        helpers.needs_package("chromium-driver")


def test_a_missing_pypi_package_skips_naming_its_pip_command_and_an_installed_one_runs(monkeypatch):
    monkeypatch.delenv(helpers.REQUIRE_PACKAGES_ENV, raising=False)
    monkeypatch.setitem(helpers.PYPI_PACKAGES, "no-such-package-xyz", "pip install no-such-package-xyz")
    monkeypatch.setitem(helpers.PYPI_PACKAGES, "pytest", "pip install pytest")  # installed: its metadata is there
    with pytest.raises(pytest.skip.Exception, match=r"needs the PyPI package no-such-package-xyz: pip install"):
        conftest.pytest_runtest_setup(Item("no-such-package-xyz"))
    conftest.pytest_runtest_setup(Item("pytest"))
