"""realm_web: run GGUF language models on WebGPU, natively (wgpu-py) and in the browser (Pyodide)."""

from realm_web.errors import DeviceError, GGUFError, RealmError, SourceError

__all__ = ["RealmError", "GGUFError", "SourceError", "DeviceError"]
__version__ = "0.1.0"
