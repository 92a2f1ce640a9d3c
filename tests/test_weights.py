"""Streamed weight upload: bytes on the GPU equal the file's, host memory stays bounded by the chunk size,
weights larger than the binding limit are split by whole rows and give results identical to the unsplit run."""

from __future__ import annotations

import tracemalloc

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu import random_tensor, read_f32, upload_array

from realm_web.errors import DeviceError
from realm_web.gguf import open_gguf
from realm_web.kernels.matmul import get_rows, matmul, matvec
from realm_web.weights import plan_parts, upload_gguf


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A GGUF with a 2-D Q8_0 tensor, a Q4_K tensor of random blocks, an F32 vector and a 6 MiB F32 matrix."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("w") / "m.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tensor("q8", gguf.quants.quantize(rng.standard_normal((300, 256), dtype=np.float32), Q.Q8_0),
                 raw_dtype=Q.Q8_0)  # fmt: skip
    data, _ = random_tensor("Q4_K", 40, 512, rng)
    w.add_tensor("q4k", np.frombuffer(data, np.uint8).reshape(40, -1), raw_dtype=Q.Q4_K)
    w.add_tensor("norm", rng.standard_normal(256, dtype=np.float32))
    w.add_tensor("big", rng.standard_normal((1536, 1024), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gpu_bytes(dev, weight) -> bytes:
    out = b""
    for p in weight.parts:
        out += dev.read(p.buffer, 0, p.n_rows * weight.row_bytes)
    return out


@pytest.mark.parametrize("max_binding", [None, 1 << 20, 4096])
def test_bytes_on_gpu_equal_file(dev, model_file, max_binding):
    gf = open_gguf(model_file)
    ws = upload_gguf(dev, gf, chunk_bytes=64 << 10, max_binding=max_binding)
    for info in gf.tensors:
        w = ws[info.name]
        assert gpu_bytes(dev, w) == gf.tensor_bytes(info), info.name
        assert [p.row_begin for p in w.parts] == sorted(p.row_begin for p in w.parts)
        assert sum(p.n_rows for p in w.parts) == info.n_rows
        for p in w.parts:
            assert p.buffer.size <= (max_binding or dev.info.max_storage_binding)
    if max_binding == 1 << 20:
        assert len(ws["big"].parts) == 6  # 6 MiB in parts of at most 1 MiB


def test_progress_reports_bytes(dev, model_file):
    gf = open_gguf(model_file)
    seen = []
    upload_gguf(dev, gf, chunk_bytes=1 << 20, progress=lambda done, total: seen.append((done, total)))
    total = sum(t.n_bytes for t in gf.tensors)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:], strict=False))
    assert len(seen) > 6  # the 6 MiB tensor reports chunk by chunk


def test_host_memory_bounded_by_chunk(dev, model_file):
    gf = open_gguf(model_file)
    reads = []
    orig = gf.tensor_bytes

    def spy(info, start=0, length=None):
        data = orig(info, start, length)
        reads.append(len(data))
        return data

    gf.tensor_bytes = spy
    chunk = 256 << 10
    tracemalloc.start()
    upload_gguf(dev, gf, ["big"], chunk_bytes=chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(reads) <= chunk
    assert peak < 4 * chunk, f"peak traced host memory {peak} for a 6 MiB tensor in {chunk}-byte chunks"


def test_split_results_identical_to_unsplit(dev, model_file, rng):
    """Split parts run the same per-row code: results are bitwise equal, for matvec, matmul and get_rows."""
    gf = open_gguf(model_file)
    whole = upload_gguf(dev, gf, ["q8", "q4k", "big"])
    split = upload_gguf(dev, gf, ["q8", "q4k", "big"], max_binding=8192)
    for name in ("q8", "q4k", "big"):
        a, b = whole[name], split[name]
        assert len(a.parts) == 1 and len(b.parts) > 1
        k, n = a.row_elems, a.n_rows
        x = upload_array(dev, rng.standard_normal((5, k)).astype(np.float32))
        ids = upload_array(dev, np.array([0, n - 1, n // 2, 1], dtype=np.uint32))
        outs = []
        for w in (a, b):
            y1, y2, e = dev.create_buffer(4 * n), dev.create_buffer(4 * 5 * n), dev.create_buffer(4 * 4 * k)
            dev.submit(matvec(dev, w, x, y1) + matmul(dev, w, x, y2, 5) + get_rows(dev, w, ids, e, 4))
            outs.append([read_f32(dev, y1, n), read_f32(dev, y2, 5 * n), read_f32(dev, e, 4 * k)])
        for got_a, got_b in zip(*outs, strict=True):
            np.testing.assert_array_equal(got_a, got_b)


def test_plan_parts():
    assert plan_parts("t", 10, 100, 1000) == [(0, 10)]
    assert plan_parts("t", 10, 100, 999) == [(0, 5), (5, 5)]  # balanced, not 9 + 1
    assert plan_parts("t", 7, 18, 40) == [(0, 2), (2, 2), (4, 2), (6, 1)]  # 2 rows of 18 B pad to 36 ≤ 40
    with pytest.raises(DeviceError, match="one row is 4096 bytes"):
        plan_parts("t", 3, 4096, 4000)
