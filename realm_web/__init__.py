"""realm_web: run GGUF language models on WebGPU, natively (wgpu-py) and in the browser (Pyodide)."""

from realm_web.errors import DeviceError, DeviceLostError, GGUFError, OutOfMemoryError, RealmError, SourceError
from realm_web.model import ContextError, Model, load, load_tokenizer
from realm_web.sampling import SamplingParams
from realm_web.tokenizer import Tokenizer

__all__ = [
    "load", "load_tokenizer", "Model", "Tokenizer", "SamplingParams",
    "RealmError", "GGUFError", "SourceError", "DeviceError", "DeviceLostError", "OutOfMemoryError", "ContextError",
]  # fmt: skip
__version__ = "0.1.0"
