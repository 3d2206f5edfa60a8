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
        assert handle == "gpu0"
        return types.SimpleNamespace(total=40_000 * 2**20, used=self.used_mb * 2**20)

    def nvmlDeviceGetUtilizationRates(self, handle):
        assert handle == "gpu0"
        return types.SimpleNamespace(gpu=self.utilisation)

    def nvmlDeviceGetPowerUsage(self, handle):
        assert handle == "gpu0"
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


def test_the_console_line_and_the_tracker_scalars_say_exactly_what_was_measured():
    window = HardwareWindow(
        cpu_percent=187.4, rss_mb=2150.0, gpu_percent=93.2, gpu_memory_mb=11468.8, gpu_power_w=211.6
    )
    assert window.line() == "CPU 187% · RSS 2.1 GB · GPU 93% · 11.2 GB · 212 W"
    assert window.scalars() == {
        "hardware/cpu_percent": 187.4,
        "hardware/rss_mb": 2150.0,
        "hardware/gpu_percent": 93.2,
        "hardware/gpu_memory_mb": 11468.8,
        "hardware/gpu_power_w": 211.6,
    }
    assert HardwareWindow().line() == "" and HardwareWindow().scalars() == {}


def test_hints_name_the_figures_and_fire_only_beyond_their_thresholds(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(used_mb=1000))
    monitor = HardwareMonitor(gpu_index=0)
    monitor.stop()
    monitor.memory_total_mb = 10 * 1024
    at = HardwareWindow(rss_mb=9 * 1024, gpu_memory_mb=36_000)  # exactly 90%: not yet
    assert monitor.hints(at, loader_wait_share=hardware.LOADER_BOUND_SHARE, workers=4) == []
    over = HardwareWindow(rss_mb=9.5 * 1024, gpu_memory_mb=38_000)
    assert monitor.hints(over, loader_wait_share=None, workers=4) == [
        "memory near its limit: 9.5 of 10.0 GB; lower --batch-size or --workers",
        "GPU memory near its limit: 37.1 of 39.1 GB; lower --batch-size",
    ]
    assert monitor.hints(HardwareWindow(), loader_wait_share=0.5, workers=4) == [
        "loader-bound: the GPU waited for images 50% of the epoch; raise --workers (now 4)"
    ]


def spin(seconds: float) -> None:
    busy(seconds)


def test_the_decoding_workers_cpu_and_memory_count_with_tlearns(monkeypatch):
    """A busy child (a decoding worker) while tlearn itself sleeps: its CPU counts; an idle child started after
    it must not hide it; memory is the whole tree's."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with HardwareMonitor(interval=0.1) as monitor:
        busy_child = context.Process(target=spin, args=(3.0,))
        busy_child.start()
        idle_child = context.Process(target=time.sleep, args=(5.0,))
        idle_child.start()
        time.sleep(1.0)  # both children are up (spawned interpreters start in well under a second)
        monitor.take()
        own = hardware.psutil.Process().memory_info().rss / 2**20
        time.sleep(1.0)
        window = monitor.take()
        busy_child.kill()
        idle_child.kill()
        busy_child.join()
        idle_child.join()
    assert window.cpu_percent > 60  # the child's spinning core, though this process slept
    assert window.rss_mb > own + 5  # the children's memory on top of this process's
