"""pyamdgpuinfo (libdrm through /dev/dri) and psutil, for machines where sysfs isn't enough."""

from __future__ import annotations

from daemon.gpu.sensors.base import Reading


class PyAmdgpu:
    def __init__(self, index: int = 0):
        self.gpu = None
        self.problem: str | None = None
        try:
            import pyamdgpuinfo
        except ImportError:
            self.problem = "pyamdgpuinfo is not installed (pip install 'nightshiftd[amd]')"
            return
        try:
            if pyamdgpuinfo.detect_gpus() <= index:
                self.problem = "pyamdgpuinfo found no amdgpu device"
                return
            self.gpu = pyamdgpuinfo.get_gpu(index)
        except FileNotFoundError:
            self.problem = "no /dev/dri render node (no amdgpu device)"
        except PermissionError:
            self.problem = "cannot open /dev/dri/renderD*: add the user to the render group"
        except Exception as e:  # noqa: BLE001 - a C extension; any failure means "not available"
            self.problem = f"pyamdgpuinfo failed: {e}"

    @property
    def found(self) -> bool:
        return self.gpu is not None

    def read_into(self, r: Reading) -> None:
        if self.gpu is None:
            return
        for name, fn, scale in (("edge_c", "query_temperature", 1.0), ("busy_pct", "query_load", 100.0),
                                ("power_w", "query_power", 1.0), ("sclk_mhz", "query_sclk", 1e-6)):
            try:
                setattr(r, name, float(getattr(self.gpu, fn)()) * scale)
            except Exception as e:  # noqa: BLE001 - RuntimeError on a failed query: unknown
                r.errors[name] = f"pyamdgpuinfo {fn}: {e}"
        r.source = r.source or "pyamdgpuinfo"


class PsutilTemps:
    """psutil.sensors_temperatures(): 'amdgpu'/'edge' and 'k10temp'/'Tctl'. The key vanishes
    during a reset, which reads as unknown."""

    def __init__(self):
        import psutil
        self.psutil = psutil

    @property
    def found(self) -> bool:
        temps = self._temps()
        return "amdgpu" in temps or "k10temp" in temps

    def _temps(self) -> dict:
        fn = getattr(self.psutil, "sensors_temperatures", None)
        try:
            return fn() if fn else {}
        except OSError:
            return {}

    def read_into(self, r: Reading) -> None:
        temps = self._temps()
        for entry in temps.get("amdgpu", []):
            if entry.label in ("edge", ""):
                r.edge_c = entry.current
        for entry in temps.get("k10temp", []):
            if entry.label == "Tctl" and r.tctl_c is None:
                r.tctl_c = entry.current
        if r.edge_c is None:
            r.errors.setdefault("edge_c", "psutil: no amdgpu temperature")
        r.source = r.source or "psutil"
