"""The pynvml test double is faithful to the real module: same function names and
signatures, the same exception classes and constants, the same struct types."""

from __future__ import annotations

import ctypes
import inspect

import pynvml as real
import pytest
from fake_pynvml import _FUNCTIONS, FakeGpu, FakeNvml


def test_every_fake_function_exists_in_pynvml_with_the_same_parameters():
    fake = FakeNvml()
    for name in _FUNCTIONS:
        assert hasattr(real, name), f"pynvml has no {name}"
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        fake_params = list(inspect.signature(getattr(fake.module, name)).parameters)
        assert fake_params == real_params, name


def test_exception_classes_are_pynvmls_own():
    mod = FakeNvml().module
    for name in ("NVMLError", "NVMLError_NotSupported", "NVMLError_GpuIsLost", "NVMLError_Unknown",
                 "NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_Uninitialized",
                 "NVMLError_NotFound", "NVMLError_FunctionNotFound", "NVMLError_NoPermission"):  # fmt: skip
        assert getattr(mod, name) is getattr(real, name)
    err = mod.NVMLError(mod.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is real.NVMLError_NotSupported
    assert isinstance(err, real.NVMLError)
    assert str(err) == "Not Supported"


def test_constants_and_structs_are_pynvmls_own():
    mod = FakeNvml().module
    assert mod.NVML_GPM_METRIC_SM_OCCUPANCY == real.NVML_GPM_METRIC_SM_OCCUPANCY == 3
    assert mod.nvmlClocksEventReasonSwPowerCap == 0x4
    assert mod.c_nvmlGpmMetricsGet_t is real.c_nvmlGpmMetricsGet_t
    assert mod.c_nvmlUtilization_t is real.c_nvmlUtilization_t


def test_calls_before_init_raise_uninitialized_like_nvml():
    fake = FakeNvml()
    with pytest.raises(real.NVMLError_Uninitialized):
        fake.module.nvmlDeviceGetCount()


def test_returns_real_ctypes_types():
    fake = FakeNvml([FakeGpu()])
    m = fake.module
    m.nvmlInit()
    h = m.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(h, real.c_nvmlDevice_t)
    assert isinstance(m.nvmlDeviceGetUtilizationRates(h), real.c_nvmlUtilization_t)
    assert m.nvmlDeviceGetPciInfo(h).busId == "00000000:01:00.0"  # _PrintableStructure decodes char arrays
    s = m.nvmlGpmSampleAlloc()
    assert isinstance(s, real.c_nvmlGpmSample_t)
    m.nvmlGpmSampleFree(s)
    with pytest.raises(real.NVMLError_InvalidArgument):
        m.nvmlGpmSampleFree(s)
    assert ctypes.addressof(s.contents) in fake.gpm_freed


def test_library_missing_raises_library_not_found():
    fake = FakeNvml(library_missing=True)
    with pytest.raises(real.NVMLError_LibraryNotFound):
        fake.module.nvmlInit()
