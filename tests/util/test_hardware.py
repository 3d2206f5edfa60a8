"""The hardware monitor: CPU and memory of the process tree, a GPU's through NVML, and the hints it gives."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest

from tlearn.util import hardware
from tlearn.util.hardware import HardwareMonitor, HardwareWindow


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_core_reads_as_about_100_percent_and_memory_as_this_processes():
    with HardwareMonitor(interval=0.1) as monitor:
        monitor.take()  # start the window now
        worker = threading.Thread(target=busy, args=(1.0,))
        worker.start()
        worker.join()
        window = monitor.take()
    assert window.samples >= 2  # the thread's own and the one `take` adds (the spinning thread holds the GIL)
    assert 50 < window.cpu_percent < 250  # one spinning thread (plus whatever else runs), never more than 2 cores
    assert window.rss_mb > 20 and window.gpu_percent is None and window.gpu_memory_mb is None
    assert window.line().startswith("CPU ") and "RSS" in window.line() and "GPU" not in window.line()
    assert set(window.scalars()) == {"hardware/cpu_percent", "hardware/rss_mb"}


def test_an_idle_window_reads_near_zero():
    with HardwareMonitor(interval=0.1) as monitor:
        monitor.take()
        time.sleep(0.6)
        window = monitor.take()
    assert window.cpu_percent < 30


class FakeNvml(types.ModuleType):
    """pynvml's calls that the monitor makes, answering a GPU `used_mb` of 40,000 MB full and 80% busy."""

    def __init__(self, used_mb: float, utilisation: float = 80.0) -> None:
        super().__init__("pynvml")
        self.used_mb, self.utilisation, self.shut = used_mb, utilisation, False

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=40_000 * 2**20, used=self.used_mb * 2**20)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=self.utilisation)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 212_000  # milliwatts

    def nvmlShutdown(self):
        self.shut = True


def test_a_gpu_is_read_through_nvml_and_a_waiting_gpu_is_called_loader_bound(monkeypatch):
    nvml = FakeNvml(used_mb=12_000, utilisation=35.0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monitor = HardwareMonitor(gpu_index=0, interval=0.1)
    window = monitor.take()
    monitor.stop()
    assert (window.gpu_percent, round(window.gpu_memory_mb), window.gpu_power_w) == (35.0, 12_000, 212.0)
    assert "GPU 35%" in window.line() and "212 W" in window.line() and nvml.shut
    hints = monitor.hints(window, loader_wait_share=0.6, workers=2)
    assert hints == ["loader-bound: the GPU waited for images 60% of the epoch (GPU 35% busy); raise --workers (now 2)"]
    assert monitor.hints(window, loader_wait_share=0.1, workers=2) == []


def test_memory_near_its_limit_is_said_for_the_gpu_and_the_machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(used_mb=39_000))
    monitor = HardwareMonitor(gpu_index=0)
    monitor.stop()
    full = HardwareWindow(rss_mb=0.95 * monitor.memory_total_mb, gpu_memory_mb=39_000)
    hints = monitor.hints(full, loader_wait_share=None, workers=2)
    assert [hint.split(":")[0] for hint in hints] == ["memory near its limit", "GPU memory near its limit"]
    assert monitor.hints(HardwareWindow(rss_mb=100, gpu_memory_mb=1000), loader_wait_share=None, workers=2) == []


def test_a_cpu_run_never_calls_itself_loader_bound():
    monitor = HardwareMonitor(gpu_index=None)
    assert monitor.hints(HardwareWindow(cpu_percent=20.0), loader_wait_share=0.9, workers=0) == []


def test_without_nvml_the_gpu_figures_are_unknown_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monitor = HardwareMonitor(gpu_index=0, interval=0.1)
    window = monitor.take()
    monitor.stop()
    assert window.gpu_percent is None and window.rss_mb is not None


@pytest.mark.parametrize("missing", ["cpu_times", "memory_info"])
def test_a_figure_psutil_cannot_read_is_unknown(monkeypatch, missing):
    def refuse(self):
        raise hardware.psutil.AccessDenied()

    monitor = HardwareMonitor(interval=0.1)
    monkeypatch.setattr(hardware.psutil.Process, missing, refuse)
    window = monitor.take()
    field = {"cpu_times": "cpu_percent", "memory_info": "rss_mb"}[missing]
    assert getattr(window, field) is None
