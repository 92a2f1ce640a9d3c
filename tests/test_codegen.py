"""The shipped WGSL is what the templates render, and every variant compiles on the adapter."""

from __future__ import annotations

import os

import pytest

from codegen.__main__ import OUT, render_all
from codegen.variants import variants
from realm_web.kernels import wgsl


def test_generated_wgsl_is_current():
    files = render_all()
    on_disk = {p.name: p.read_text() for p in OUT.glob("*.wgsl")}
    stale = sorted(n for n in files if on_disk.get(n) != files[n])
    extra = sorted(set(on_disk) - set(files))
    assert not stale and not extra, f"run `python -m codegen`: stale {stale}, not rendered by codegen {extra}"


def test_adapter_is_the_expected_one(dev):
    """CI sets REALM_WEB_EXPECT_ADAPTER=llvmpipe: prove the suite ran on lavapipe and not on something else."""
    expected = os.environ.get("REALM_WEB_EXPECT_ADAPTER")
    print(f"adapter: {dev.info}")
    if expected:
        assert expected.lower() in dev.info.name.lower(), f"expected adapter {expected!r}, got {dev.info.name!r}"


@pytest.mark.parametrize("name", [v.name for v in variants()])
def test_variant_compiles(dev, name):
    if name.endswith("_sg") and not dev.info.subgroups:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI's adapter (lavapipe) must have subgroups to compile every variant")
        pytest.skip("adapter without subgroups")
    dev._pipeline(name, wgsl(name), {})
