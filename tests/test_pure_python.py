"""The shared engine must import without numpy or wgpu: that is what Pyodide has (the browser tests then run
it for real). Checked in a fresh interpreter where importing numpy or wgpu raises."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Every module above the device interface, and the interface itself: shared between native and browser.
SHARED = [
    "realm_web", "realm_web.chat", "realm_web.config", "realm_web.device", "realm_web.errors", "realm_web.gguf",
    "realm_web.kernels", "realm_web.kernels.attention", "realm_web.kernels.elementwise", "realm_web.kernels.matmul",
    "realm_web.kernels.norm", "realm_web.kernels.rope", "realm_web.model", "realm_web.quants", "realm_web.sampling",
    "realm_web.source", "realm_web.tokenizer", "realm_web.transformer", "realm_web.weights", "realm_web.registry",
    "realm_web.bench", "realm_web.profile",
]  # fmt: skip


def test_shared_modules_import_without_numpy_or_wgpu():
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("numpy", "wgpu"):
                    raise ImportError(f"{{name}} is not available (as in Pyodide)")

        sys.meta_path.insert(0, Block())
        for m in {SHARED!r}:
            importlib.import_module(m)
        assert "numpy" not in sys.modules and "wgpu" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_native_only_modules_do_need_them():
    """The guard above is not vacuous: the native device does import wgpu."""
    code = "import sys\nsys.modules['wgpu'] = None\ntry:\n import realm_web.device.native\n"
    code += "except ImportError:\n print('refused')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "refused", r.stderr
