"""One forward step of a llama-family transformer on the GPU, as a list of pre-built dispatches.

A step takes `n_tok` tokens of any mix of sequences (prompt chunks and one token of each decoding sequence):
every token carries its own position and sequence slot, and attention reads each slot's blocks of the paged
KV cache through the block table. The rows whose logits are wanted (`out_rows`: the last token of each
sequence that samples, or every row of a scoring request) are gathered after the final norm, so the output
head runs on those alone; their logits land in `self.logits` [n_out, n_vocab]. Steps are recorded once per
shape (token and output counts rounded up to a few buckets, the rest padding that reads and writes nothing)
and replayed: positions, slots and rows arrive as data. Every kernel computes a token's row the same way
whatever else is in the step, so a sequence's results do not depend on what it was batched with.
Weights are named as in the GGUF file (`blk.N.attn_q.weight`, ...).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from realm_web.config import Config
from realm_web.device import Buffer, Device, Dispatch
from realm_web.kernels.attention import flash_attn, partials_bytes, split_chunk
from realm_web.kernels.elementwise import add, swiglu
from realm_web.kernels.matmul import get_rows, matmul_batch
from realm_web.kernels.norm import rms_norm
from realm_web.kernels.rope import rope_kv_write
from realm_web.kv_cache import PagedKVCache
from realm_web.lora import LoraPool
from realm_web.quants import BY_NAME
from realm_web.weights import Weight, WeightPart

PAD_POS = 0xFFFFFFFF  # position of a padding token: kv_write drops it, flash_attn gives it zeros


def bucket(n: int) -> int:
    """Rows a step of n rows is recorded for: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, ... (padding ≤ 1/3)."""
    b = 1
    while b < n:
        b = b + 1 if b < 4 else (b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3)
    return b


@dataclass(frozen=True)
class Inputs:
    """The buffers a step reads its tokens from: ids, (position, slot) pairs, output rows. Lane 0 is the
    transformer's own; more lanes let several steps go in one submission (a draft model's chained steps, whose
    ids are the previous step's sampled tokens on the GPU)."""

    ids: Buffer
    tok: Buffer
    out_rows: Buffer


@dataclass
class Step:
    """A recorded step: its dispatches and the shape they were built for."""

    n_tok: int
    n_out: int
    dispatches: list[Dispatch]


class Transformer:
    def __init__(
        self,
        dev: Device,
        cfg: Config,
        weights: dict[str, Weight],
        vectors: dict[str, Buffer],
        kv: PagedKVCache,
        *,
        max_batch: int = 64,
    ):
        """`weights`: 2-D tensors on the GPU; `vectors`: norms and biases as f32 buffers; `kv`: the paged cache;
        `max_batch`: tokens a step may take."""
        self.dev, self.cfg, self.w, self.vec, self.kv = dev, cfg, weights, vectors, kv
        self.max_batch = max_batch
        b, c = bucket(max_batch), cfg
        buf = dev.create_buffer
        self.ids = buf(4 * b, "ids")  # [b] u32 token ids
        self.tok = buf(8 * b, "tok")  # [b][2] u32 (position, sequence slot)
        self.out_rows = buf(4 * b, "out_rows")  # [n_out] u32 rows whose logits are wanted
        self.x = buf(4 * b * c.n_embd, "x")  # [b, n_embd] residual stream
        self.xn = buf(4 * b * c.n_embd, "xn")  # [b, n_embd] normed
        self.q = buf(4 * b * c.q_dim, "q")  # [b, n_head * head_dim]
        self.k = buf(4 * b * c.kv_dim, "k")  # [b, n_head_kv * head_dim]
        self.v = buf(4 * b * c.kv_dim, "v")
        self.attn = buf(4 * b * c.q_dim, "attn")  # [b, n_head * head_dim]
        # split-KV attention: keys per chunk and the chunks' partial results (shared by the layers)
        self.attn_chunk = split_chunk(kv.max_blocks * kv.block_size)
        max_chunks = -(-kv.max_blocks * kv.block_size // self.attn_chunk)
        self.attn_part = buf(partials_bytes(b, c.n_head, c.head_dim, max_chunks), "attn_part")
        self.gate = buf(4 * b * c.n_ff, "gate")  # [b, n_ff]
        self.up = buf(4 * b * c.n_ff, "up")
        self.h = buf(4 * b * c.n_ff, "h")
        self.xs = buf(4 * b * c.n_embd, "xs")  # [n_out, n_embd] the gathered rows
        self.logits = buf(4 * b * c.n_vocab, "logits")  # [n_out, n_vocab]
        # xn seen as an f32 table, so get_rows gathers the output rows
        self._xn_rows = Weight("xn", BY_NAME["F32"], (c.n_embd, b), [WeightPart(self.xn, 0, b)])
        self._steps: dict[tuple[int, int, int, int], Step] = {}
        self.lanes = [Inputs(self.ids, self.tok, self.out_rows)]
        self.lora: LoraPool | None = None  # adapters (set by the model): steps that select some add their products

    def add_lane(self, ids: Buffer) -> int:
        """A lane whose token ids are read from `ids` (positions and output rows its own); returns its index."""
        b = bucket(self.max_batch)
        j = len(self.lanes)
        self.lanes.append(Inputs(ids, self.dev.create_buffer(8 * b, f"tok.{j}"),
                                 self.dev.create_buffer(4 * b, f"out_rows.{j}")))  # fmt: skip
        return j

    # -- recording ----------------------------------------------------------------------------------------------
    def _linear(
        self, name: str, x: Buffer, y: Buffer, n_tok: int, lora: bool, out_rows: bool = False, epilogue="store"
    ) -> list[Dispatch]:
        # one kernel family for every step size, so a token's row never depends on what it is batched with; the
        # adapters' products are added after it (a token that selects none keeps the base product bitwise).
        # epilogue "add": y += the product (the residual stream takes a block's output in the same dispatch)
        ds = matmul_batch(self.dev, self.w[name], x, y, n_tok, epilogue=epilogue)
        if lora and self.lora is not None:
            ds += self.lora.apply(name, x, y, n_tok, out_rows=out_rows)
        return ds

    def _layer(self, i: int, n: int, inp: Inputs, lora: bool) -> list[Dispatch]:
        dev, c, p, kv = self.dev, self.cfg, f"blk.{i}.", self.kv
        ds = [rms_norm(dev, self.x, self.vec[p + "attn_norm.weight"], self.xn, n, c.n_embd, c.rms_eps)]
        qkv = (("attn_q", self.q, c.q_dim), ("attn_k", self.k, c.kv_dim), ("attn_v", self.v, c.kv_dim))
        for proj, out, width in qkv:
            ds += self._linear(p + proj + ".weight", self.xn, out, n, lora)
            bias = self.vec.get(p + proj + ".bias")
            if bias is not None:
                ds.append(add(dev, out, bias, out, n * width, width=width))
        # RoPE of q and k and the KV-cache write in one dispatch (k is rotated into the cache only)
        ds.append(rope_kv_write(dev, self.q, self.k, self.v, inp.tok, kv.table, kv.k[i], kv.v[i], n, c.n_head,
                                c.n_head_kv, c.head_dim, kv.block_size, kv.max_blocks, n_rot=c.n_rot,
                                freq_base=c.rope_base, freq_scale=c.rope_freq_scale, neox=c.rope_neox,
                                kv_type=kv.kv_type))  # fmt: skip
        ds += flash_attn(dev, self.q, kv.k[i], kv.v[i], inp.tok, kv.table, self.attn, n, c.n_head, c.n_head_kv,
                         c.head_dim, kv.block_size, kv.max_blocks, 1.0 / math.sqrt(c.head_dim), kv_type=kv.kv_type,
                         chunk=self.attn_chunk, part=self.attn_part)  # fmt: skip
        # the block outputs go straight into the residual stream (epilogue "add": x += W·a, the add kernel's sum)
        ds += self._linear(p + "attn_output.weight", self.attn, self.x, n, lora, epilogue="add")
        ds.append(rms_norm(dev, self.x, self.vec[p + "ffn_norm.weight"], self.xn, n, c.n_embd, c.rms_eps))
        ds += self._linear(p + "ffn_gate.weight", self.xn, self.gate, n, lora)
        up = self.w[p + "ffn_up.weight"]
        if lora and self.lora is not None and up.name in self.lora.pools:
            # an adapter's product joins up before the gate: SwiGLU as its own kernel (the same arithmetic)
            ds += self._linear(up.name, self.xn, self.up, n, lora)
            ds.append(swiglu(dev, self.gate, self.up, self.h, n, c.n_ff))
        else:  # h = silu(gate) · (W_up·xn) in the up projection's dispatch
            ds += matmul_batch(dev, up, self.xn, self.h, n, epilogue="swiglu", aux=self.gate)
        ds += self._linear(p + "ffn_down.weight", self.h, self.x, n, lora, epilogue="add")
        return ds

    def _record(self, n: int, n_out: int, lane: int, lora: bool) -> Step:
        dev, c, inp = self.dev, self.cfg, self.lanes[lane]
        ds = get_rows(dev, self.w["token_embd.weight"], inp.ids, self.x, n)
        for i in range(c.n_layer):
            ds += self._layer(i, n, inp, lora)
        if n_out:  # a step of prompt chunks that sample nothing stops at the last layer
            ds.append(rms_norm(dev, self.x, self.vec["output_norm.weight"], self.xn, n, c.n_embd, c.rms_eps))
            ds += get_rows(dev, self._xn_rows, inp.out_rows, self.xs, n_out)
            head = self.w["token_embd.weight" if c.tied_output else "output.weight"]
            ds += self._linear(head.name, self.xs, self.logits, n_out, lora, out_rows=True)
        return Step(n, n_out, ds)

    def step(self, n: int, n_out: int, lane: int = 0, lora: bool = False) -> Step:
        """The recorded step for this shape; `lora`: the one that adds the selected adapters' products (recorded
        again whenever the adapter pools change)."""
        key = (n, n_out, lane, self.lora.version if lora and self.lora is not None else -1)
        s = self._steps.get(key)
        if s is None:
            s = self._steps[key] = self._record(n, n_out, lane, lora)
        return s

    # -- running ------------------------------------------------------------------------------------------------
    def run(self, ids: list[int], positions: list[int], slots: list[int], out_rows: list[int], extra=(),
            lora: list | None = None) -> int:  # fmt: skip
        """Submit one step for len(ids) ≤ max_batch tokens (plus `extra` dispatches, e.g. sampling, in the same
        submission); `out_rows` (≥ 1) are the rows whose logits are wanted, in the order they land in
        `self.logits`. `lora`: each token's adapters, ((slot, scale), ...) per row, or None. Returns the number of
        logits rows the step computed (len(out_rows) rounded up to its bucket: `extra` dispatches take that many
        rows)."""
        dispatches, ob = self.encode(ids, positions, slots, out_rows, lora=lora)
        self.dev.submit(dispatches + list(extra))
        return ob

    def encode(self, ids: list[int] | None, positions: list[int], slots: list[int], out_rows: list[int],
               lane: int = 0, lora: list | None = None) -> tuple[list[Dispatch], int]:  # fmt: skip
        """Write a step's inputs into lane `lane` and return its dispatches (to submit, maybe with others) and its
        output-row count. `ids` None: the lane's ids buffer already holds them (written on the GPU)."""
        n, n_out = len(positions), len(out_rows)
        if not 0 < n <= self.max_batch or not 0 <= n_out <= n:
            raise ValueError(f"a step takes 1..{self.max_batch} tokens and 0..n_tok output rows, got {n}, {n_out}")
        inp = self.lanes[lane]
        nb, ob = bucket(n), bucket(n_out) if n_out else 0
        meta = [v for pair in zip(positions, slots, strict=True) for v in pair] + [PAD_POS, 0] * (nb - n)
        if ids is not None:
            self.dev.write(inp.ids, struct.pack(f"<{nb}I", *ids, *[0] * (nb - n)))
        self.dev.write(inp.tok, struct.pack(f"<{2 * nb}I", *meta))
        if ob:
            self.dev.write(inp.out_rows, struct.pack(f"<{ob}I", *out_rows, *[out_rows[-1]] * (ob - n_out)))
        with_lora = lora is not None and any(lora)
        if with_lora:
            if self.lora is None or lane:
                raise ValueError("adapters need a LoRA pool, on lane 0")
            self.lora.write_sel(lora, out_rows, nb, ob)
        return self.step(nb, ob, lane, with_lora).dispatches, ob

    def read_logits(self, n_rows: int) -> bytes:
        """Raw f32 logits of the last step: the first `n_rows` rows of n_vocab."""
        return self.dev.read(self.logits, 0, 4 * n_rows * self.cfg.n_vocab)
