"""``run.precision = "auto"``: bf16 only where the device computes it natively (read from the CPU's flags, faked
here), an explicit bf16 on a CPU without it warns once, and the machine is recorded."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError
from fastadapt.runtime import hardware, precision
from fastadapt.runtime.precision import EmulatedBF16Warning, autocast, resolve_precision

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx fma avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""
ZEN4 = ZEN3.replace("7B13", "9B14").replace("bmi2", "bmi2 avx512f avx512_vnni avx512_bf16")
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"


@pytest.fixture
def cpu(monkeypatch):
    """Fake ``/proc/cpuinfo`` with the text given to the returned function; the once-only warning starts over."""
    monkeypatch.setattr(precision, "_warned", set())
    for name in hardware.ISA_ENV:  # a cap set in the environment would change what the fake flags mean
        monkeypatch.delenv(name, raising=False)

    def use(text: str) -> None:
        monkeypatch.setattr(hardware, "read_cpuinfo", lambda: text)

    return use


def test_cpu_info_reads_the_model_and_the_relevant_flags(cpu):
    cpu(ZEN4)
    info = hardware.cpu_info()
    assert info["model"] == "AMD EPYC 9B14 64-Core Processor"
    assert info["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]  # in RELEVANT_FLAGS' order
    assert info["bf16_native"] is True and info["capability"] == torch.backends.cpu.get_cpu_capability()
    cpu(ZEN3)
    assert hardware.cpu_info()["flags"] == ["avx2", "fma"] and hardware.cpu_info()["bf16_native"] is False
    cpu(SAPPHIRE)
    assert hardware.cpu_info()["bf16_native"] is True and "amx_bf16" in hardware.cpu_info()["flags"]
    cpu("")  # no /proc/cpuinfo: a model from platform, no flags
    assert hardware.cpu_info()["flags"] == [] and hardware.cpu_info()["bf16_native"] is False


@pytest.mark.parametrize(("text", "expected"), [(ZEN3, "fp32"), (ZEN4, "bf16"), (SAPPHIRE, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(cpu, text, expected):
    cpu(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert resolve_precision("auto", "cpu") == expected
        ctx = autocast("auto", "cpu")
    assert isinstance(ctx, torch.autocast) == (expected == "bf16")
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_once_with_the_slowdown(cpu):
    cpu(ZEN3)
    with pytest.warns(EmulatedBF16Warning, match=r"AMD EPYC 7B13.*no avx512_bf16 / amx_bf16.*6-9x slower") as seen:
        assert resolve_precision("bf16", "cpu") == "bf16"  # kept: the user asked for it
    assert len(seen) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision("bf16", "cpu")  # once per process
        autocast("bf16", "cpu")


def test_explicit_bf16_on_a_cpu_with_native_bf16_does_not_warn(cpu):
    cpu(ZEN4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", "cuda") == expected


def test_auto_is_a_config_value_and_unknown_values_are_refused():
    assert load_config("protonet-quick", ["run.precision='auto'"]).run.precision == "auto"
    with pytest.raises(ConfigError, match="run.precision='half' is not allowed; choose one of fp32, bf16, auto"):
        load_config("protonet-quick", ["run.precision='half'"])


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("AVX2", "fp32"),
        ("avx512_core", "fp32"),
        ("AVX512_CORE_VNNI", "fp32"),
        ("AVX512_CORE_BF16", "bf16"),
        ("ALL", "bf16"),
    ],
)
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32_and_bf16_warn_naming_the_cap(cpu, monkeypatch, cap, expected):
    cpu(ZEN4)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.cpu_info()["onednn_max_isa"] == cap.upper()
    assert resolve_precision("auto", "cpu") == expected
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resolve_precision("bf16", "cpu")
    emulated = [w for w in seen if issubclass(w.category, EmulatedBF16Warning)]
    assert len(emulated) == (expected == "fp32")
    if emulated:
        assert f"oneDNN capped at {cap.upper()}" in str(emulated[0].message)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)  # oneDNN's older name of the same setting
    assert resolve_precision("auto", "cpu") == expected
