"""Shared fixtures. Under CI=true a missing WebGPU adapter fails the run instead of skipping."""

from __future__ import annotations

import os

import numpy as np
import pytest

np.seterr(all="raise")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_device = None


def _open():
    global _device
    if _device is None:
        from realm_web.device.native import NativeDevice

        _device = NativeDevice.create()
    return _device


@pytest.fixture(scope="session")
def dev():
    """The native device (lavapipe on a machine without a GPU)."""
    try:
        return _open()
    except Exception as e:
        if CI:
            pytest.fail(f"CI=true but no WebGPU adapter could be opened: {e}")
        pytest.skip(f"no WebGPU adapter: {e}")


def pytest_report_header(config):
    try:
        d = _open()
    except Exception as e:
        return f"WebGPU adapter: NONE ({e})"
    i = d.info
    feats = ", ".join(sorted(i.features)) or "none"
    return (
        f"WebGPU adapter: {i.name} | backend {i.backend} | type {i.adapter_type} | "
        f"optional features: {feats} | max storage binding {i.max_storage_binding >> 20} MiB"
    )


@pytest.fixture(scope="session")
def dev_plain(dev):
    """A second device without optional features: exercises the kernels' no-subgroup fallbacks."""
    from realm_web.device.native import NativeDevice

    return NativeDevice.create(features=())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
