"""One forward step of a llama-family transformer on the GPU, as a list of pre-built dispatches.

A step takes `n_tok` tokens (a prompt chunk, or one token of each of several sequences: every token carries its
own position and sequence slot) and leaves their logits in `self.logits`. Steps are recorded once per shape and
replayed: a decode step costs two small buffer writes, one submission and one read of the sampled id.
Weights are named as in the GGUF file (`blk.N.attn_q.weight`, ...).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from realm_web.config import Config
from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels.attention import flash_attn, kv_write
from realm_web.kernels.elementwise import add, swiglu
from realm_web.kernels.matmul import ROWS_PER_INVOCATION, get_rows, matmul, matvec
from realm_web.kernels.norm import rms_norm
from realm_web.kernels.rope import rope
from realm_web.weights import Weight


@dataclass
class Step:
    """A recorded step: its dispatches and the shape they were built for."""

    n_tok: int
    all_logits: bool
    dispatches: list[Dispatch]


class Transformer:
    def __init__(
        self,
        dev: Device,
        cfg: Config,
        weights: dict[str, Weight],
        vectors: dict[str, Buffer],
        *,
        n_ctx: int,
        n_seq: int = 1,
        max_batch: int = 64,
    ):
        """`weights`: 2-D tensors on the GPU; `vectors`: norms and biases as f32 buffers; `max_batch`: tokens a
        step may take (prompts longer than it are run in chunks)."""
        self.dev, self.cfg, self.w, self.vec = dev, cfg, weights, vectors
        self.n_ctx, self.n_seq, self.max_batch = n_ctx, n_seq, max_batch
        b, c = max_batch, cfg
        buf = dev.create_buffer
        self.ids = buf(4 * b, "ids")  # [b] u32 token ids
        self.tok = buf(8 * b, "tok")  # [b][2] u32 (position, sequence slot)
        self.x = buf(4 * b * c.n_embd, "x")  # [b, n_embd] residual stream
        self.xn = buf(4 * b * c.n_embd, "xn")  # [b, n_embd] normed
        self.q = buf(4 * b * c.q_dim, "q")  # [b, n_head * head_dim]
        self.k = buf(4 * b * c.kv_dim, "k")  # [b, n_head_kv * head_dim]
        self.v = buf(4 * b * c.kv_dim, "v")
        self.attn = buf(4 * b * c.q_dim, "attn")  # [b, n_head * head_dim]
        self.o = buf(4 * b * c.n_embd, "o")  # [b, n_embd] block output before the residual add
        self.gate = buf(4 * b * c.n_ff, "gate")  # [b, n_ff]
        self.up = buf(4 * b * c.n_ff, "up")
        self.h = buf(4 * b * c.n_ff, "h")
        self.logits = buf(4 * b * c.n_vocab, "logits")  # [b, n_vocab] (row 0 only for last-token steps)
        kv_bytes = 4 * n_seq * n_ctx * c.kv_dim  # [n_seq][n_ctx][n_head_kv][head_dim] f32
        self.k_cache = [buf(kv_bytes, f"blk.{i}.k_cache") for i in range(c.n_layer)]
        self.v_cache = [buf(kv_bytes, f"blk.{i}.v_cache") for i in range(c.n_layer)]
        self._steps: dict[tuple[int, bool], Step] = {}

    # -- recording ----------------------------------------------------------------------------------------------
    def _linear(self, name: str, x: Buffer, y: Buffer, n_tok: int) -> list[Dispatch]:
        w = self.w[name]
        if n_tok == 1:
            return matvec(self.dev, w, x, y)
        if self.dev.info.adapter_type == "CPU" and w.type.name in ROWS_PER_INVOCATION:
            # CPU adapters: the fused several-rows decode kernel once per token beats the tiled matmul (whose
            # workgroup-memory loads are per-lane gathers there): 1.6x for Q4_K 4096x4096, 32 tokens, lavapipe
            return matvec(self.dev, w, x, y, n_vec=n_tok)
        return matmul(self.dev, w, x, y, n_tok)

    def _layer(self, i: int, n: int) -> list[Dispatch]:
        dev, c, p = self.dev, self.cfg, f"blk.{i}."
        ds = [rms_norm(dev, self.x, self.vec[p + "attn_norm.weight"], self.xn, n, c.n_embd, c.rms_eps)]
        qkv = (("attn_q", self.q, c.q_dim), ("attn_k", self.k, c.kv_dim), ("attn_v", self.v, c.kv_dim))
        for proj, out, width in qkv:
            ds += self._linear(p + proj + ".weight", self.xn, out, n)
            bias = self.vec.get(p + proj + ".bias")
            if bias is not None:
                ds.append(add(dev, out, bias, out, n * width, width=width))
        for t, heads in ((self.q, c.n_head), (self.k, c.n_head_kv)):
            ds.append(rope(dev, t, self.tok, n, heads, c.head_dim, n_rot=c.n_rot, freq_base=c.rope_base,
                           freq_scale=c.rope_freq_scale, neox=c.rope_neox))  # fmt: skip
        ds.append(kv_write(dev, self.k, self.v, self.tok, self.k_cache[i], self.v_cache[i], n, c.n_head_kv,
                           c.head_dim, self.n_ctx))  # fmt: skip
        ds.append(flash_attn(dev, self.q, self.k_cache[i], self.v_cache[i], self.tok, self.attn, n, c.n_head,
                             c.n_head_kv, c.head_dim, self.n_ctx, 1.0 / math.sqrt(c.head_dim)))  # fmt: skip
        ds += self._linear(p + "attn_output.weight", self.attn, self.o, n)
        ds.append(add(dev, self.x, self.o, self.x, n * c.n_embd))
        ds.append(rms_norm(dev, self.x, self.vec[p + "ffn_norm.weight"], self.xn, n, c.n_embd, c.rms_eps))
        ds += self._linear(p + "ffn_gate.weight", self.xn, self.gate, n)
        ds += self._linear(p + "ffn_up.weight", self.xn, self.up, n)
        ds.append(swiglu(dev, self.gate, self.up, self.h, n, c.n_ff))
        ds += self._linear(p + "ffn_down.weight", self.h, self.o, n)
        ds.append(add(dev, self.x, self.o, self.x, n * c.n_embd))
        return ds

    def _record(self, n: int, all_logits: bool) -> Step:
        dev, c = self.dev, self.cfg
        ds = get_rows(dev, self.w["token_embd.weight"], self.ids, self.x, n)
        for i in range(c.n_layer):
            ds += self._layer(i, n)
        ds.append(rms_norm(dev, self.x, self.vec["output_norm.weight"], self.xn, n, c.n_embd, c.rms_eps))
        head = self.w["token_embd.weight" if c.tied_output else "output.weight"]
        if all_logits:
            ds += self._linear(head.name, self.xn, self.logits, n)
        else:  # only the last token's logits, into row 0
            ds += matvec(dev, head, self.xn, self.logits, x_offset=(n - 1) * c.n_embd)
        return Step(n, all_logits, ds)

    def step(self, n: int, all_logits: bool = False) -> Step:
        key = (n, all_logits)
        s = self._steps.get(key)
        if s is None:
            s = self._steps[key] = self._record(n, all_logits)
        return s

    # -- running ------------------------------------------------------------------------------------------------
    def run(
        self,
        ids: list[int] | None,
        positions: list[int],
        seqs: list[int],
        *,
        all_logits: bool = False,
        extra=(),
    ) -> None:
        """Submit one step for len(positions) ≤ max_batch tokens (plus `extra` dispatches, e.g. sampling, in the
        same submission). `ids=None`: the ids are already in `self.ids` (the sampler wrote them there).
        Logits land in `self.logits`: all rows, or the last token's in row 0."""
        n = len(positions)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a step takes 1..{self.max_batch} tokens, got {n}")
        for pos, s in zip(positions, seqs, strict=True):
            if not (0 <= pos < self.n_ctx and 0 <= s < self.n_seq):
                raise ValueError(f"position {pos} / sequence {s} outside the context ({self.n_ctx}) or slots")
        if ids is not None:
            self.dev.write(self.ids, struct.pack(f"<{n}I", *ids))
        meta = [v for pair in zip(positions, seqs, strict=True) for v in pair]
        self.dev.write(self.tok, struct.pack(f"<{2 * n}I", *meta))
        self.dev.submit(self.step(n, all_logits).dispatches + list(extra))

    def read_logits(self, n_rows: int = 1) -> bytes:
        """Raw f32 logits of the last step: `n_rows` rows of n_vocab."""
        return self.dev.read(self.logits, 0, 4 * n_rows * self.cfg.n_vocab)
