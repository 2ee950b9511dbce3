"""GPU health from NVML (nvidia-ml-py): sampling is I/O, the verdict is pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.inference.settings import GpuHealthOptions


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: int
    utilization: float  # 0..1
    uncorrected_ecc_errors: int | None  # None where the board does not report ECC


@dataclass(frozen=True)
class GpuReport:
    """One sampling of every GPU; `nvml_error` says why there is none."""

    samples: tuple[GpuSample, ...]
    nvml_error: str | None = None

    @property
    def available(self) -> bool:
        return self.nvml_error is None and bool(self.samples)


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: tuple[str, ...]


def assess(report: GpuReport, options: GpuHealthOptions, gpu_required: bool) -> Verdict:
    """Is the worker fit to take work? No NVML is a failure only when a GPU is required."""
    if not report.available:
        reason = f"no GPU visible to NVML: {report.nvml_error or 'no devices'}"
        return Verdict(not gpu_required, (reason,))
    reasons: list[str] = []
    for gpu in report.samples:
        if gpu.temperature_c >= options.max_temperature_c:
            reasons.append(f"gpu{gpu.index} at {gpu.temperature_c}C")
        used = gpu.memory_used_bytes / gpu.memory_total_bytes if gpu.memory_total_bytes else 0
        if used > options.max_memory_used_ratio:
            reasons.append(f"gpu{gpu.index} memory {used:.1%} used")
        errors = gpu.uncorrected_ecc_errors
        if errors is not None and errors > options.max_uncorrected_ecc_errors:
            reasons.append(f"gpu{gpu.index} has {errors} uncorrected ECC errors")
    return Verdict(not reasons, tuple(reasons))


def sample_gpus() -> GpuReport:
    """Read every GPU through NVML; a machine without NVML gets a report saying so."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuReport((), nvml_error=str(exc))
    try:
        samples = tuple(
            _sample(pynvml, i, pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        )
    finally:
        pynvml.nvmlShutdown()
    return GpuReport(samples)


def _sample(nv: Any, index: int, handle: Any) -> GpuSample:
    memory = nv.nvmlDeviceGetMemoryInfo(handle)
    utilization = nv.nvmlDeviceGetUtilizationRates(handle)
    temperature = nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
    try:
        ecc: int | None = nv.nvmlDeviceGetTotalEccErrors(
            handle,
            nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nv.NVML_VOLATILE_ECC,
        )
    except nv.NVMLError_NotSupported:
        ecc = None
    name = nv.nvmlDeviceGetName(handle)
    return GpuSample(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        temperature_c=int(temperature),
        utilization=utilization.gpu / 100,
        uncorrected_ecc_errors=None if ecc is None else int(ecc),
    )
