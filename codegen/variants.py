"""Every kernel variant realm_web ships: what is fixed per model (quant type, head dim, op flavour).

Device-dependent numbers (workgroup sizes) are WGSL `override` constants set when a pipeline is made, so
they are not variants. A variant's name is its cache key, its file name (realm_web/wgsl/NAME.wgsl) and its
GPU label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from realm_web.kernels.attention import attn_groups
from realm_web.kernels.matmul import BATCH_FUSED, BATCH_TN, ROWS_K_MULTIPLE, batch_rows
from realm_web.quants import COMPUTE_TYPES

FLOAT_TYPES = ("F32", "F16", "BF16")  # rows may be any length: units past K read as zero
# quant snippets with a fused dot_block (matvec_rows uses it instead of dequant_unit)
DOT_BLOCK = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
HEAD_DIMS = (32, 64, 80, 96, 112, 128, 256)  # multiples of 8: an f16 head row is whole vec4<u32>s
KV_TYPES = ("f32", "f16")


@dataclass(frozen=True)
class Variant:
    name: str
    template: str
    params: dict = field(default_factory=dict)


def variants() -> list[Variant]:
    out: list[Variant] = []
    for qt in COMPUTE_TYPES:
        q = qt.lower()
        common = {"qtype": q, "guard_k": qt in FLOAT_TYPES}
        out.append(Variant(f"matvec_{q}", "matvec.wgsl.j2", {**common, "subgroups": False}))
        out.append(Variant(f"matvec_{q}_sg", "matvec.wgsl.j2", {**common, "subgroups": True}))
        out.append(Variant(f"matvec_rows_{q}", "matvec_rows.wgsl.j2", {**common, "dot_block": qt in DOT_BLOCK}))
        out.append(Variant(f"matmul_{q}", "matmul.wgsl.j2", common))
        out.append(Variant(f"get_rows_{q}", "get_rows.wgsl.j2", common))
        # matmul_rows: fused where the snippet has dot_block_batch, plus `_unit` (dequant_unit) for the types whose
        # fused form needs K % ROWS_K_MULTIPLE == 0
        for fused in (True, False) if qt in BATCH_FUSED and qt in ROWS_K_MULTIPLE else (qt in BATCH_FUSED,):
            unit = "_unit" if qt in BATCH_FUSED and not fused else ""
            for tn in BATCH_TN:
                for sg in (False, True):
                    name = f"matmul_rows_{q}{unit}_t{tn}{'_sg' if sg else ''}"
                    params = {**common, "batch": fused, "tn": tn, "rb": batch_rows(qt, fused), "subgroups": sg}
                    out.append(Variant(name, "matmul_rows.wgsl.j2", params))
    out.append(Variant("copy", "copy.wgsl.j2"))
    out.append(Variant("sample", "sample.wgsl.j2"))
    for sg in (False, True):
        suffix = "_sg" if sg else ""
        out.append(Variant(f"rms_norm{suffix}", "rms_norm.wgsl.j2", {"subgroups": sg}))
        out.append(Variant(f"softmax{suffix}", "softmax.wgsl.j2", {"subgroups": sg}))
    out.append(Variant("rope_norm", "rope.wgsl.j2", {"neox": False}))
    out.append(Variant("rope_neox", "rope.wgsl.j2", {"neox": True}))
    for kv in KV_TYPES:  # the KV cache's element type: f32, or f16 packed two to a u32
        sfx = "_f16" if kv == "f16" else ""
        out.append(Variant(f"kv_write{sfx}", "kv_write.wgsl.j2", {"f16": kv == "f16"}))
        for d in HEAD_DIMS:
            for g in attn_groups(d):
                params = {"head_dim": d, "f16": kv == "f16", "group": g}
                name = f"flash_attn_hd{d}_causal{sfx}" + (f"_g{g}" if g > 1 else "")
                out.append(Variant(name, "flash_attn.wgsl.j2", params))
    out.append(Variant("flash_attn_combine", "flash_attn_combine.wgsl.j2"))
    for neox in (False, True):
        for kv in KV_TYPES:
            name = f"rope_{'neox' if neox else 'norm'}_kv_write" + ("_f16" if kv == "f16" else "")
            out.append(Variant(name, "rope_kv_write.wgsl.j2", {"neox": neox, "f16": kv == "f16"}))
    out.append(Variant("swiglu", "swiglu.wgsl.j2"))
    for stage in ("shrink", "expand"):
        out.append(Variant(f"lora_{stage}", "lora.wgsl.j2", {"stage": stage}))
    for bcast in (False, True):
        for inplace in (False, True):
            name = "add" + ("_bcast" if bcast else "") + ("_inplace" if inplace else "")
            out.append(Variant(name, "add.wgsl.j2", {"broadcast": bcast, "inplace": inplace}))
    return out
