"""The paged KV cache: one pool of fixed-size blocks shared by every sequence, with prefix caching.

`BlockManager` is the bookkeeping (pure Python, nano-vllm's `block_manager.py` and vLLM v1's `block_pool.py`):
blocks are reference-counted; a full block is keyed by a hash chained over every token before it (parent hash +
the block's tokens, salted per tenant), so a new sequence reuses the blocks of its longest cached prefix. Blocks
nobody references stay cached in the free queue, which doubles as the LRU: allocation takes the least recently
freed block and forgets its hash. `PagedKVCache` is the GPU side: per layer, K and V pools
[n_blocks][block_size][kv_dim] of `kv_type` (f16, packed two to a u32, by default; or f32), and the block table
[n_slots][max_blocks] u32 that kv_write and flash_attn read (a sequence slot's row lists its blocks in order).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from realm_web.device import Buffer, Device
from realm_web.errors import RealmError
from realm_web.kernels.attention import kv_type_bytes


def block_hash(parent: bytes | None, tokens: Seq[int], salt: str | None = None) -> bytes:
    """Key of a full block: its tokens chained to the key of the block before it. The first block mixes in
    the tenant's `salt`, so tenants with different salts never share (or time) each other's prefixes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent if parent is not None else b"root:" + (salt or "").encode())
    h.update(struct.pack(f"<{len(tokens)}I", *tokens))
    return h.digest()


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and registered in the prefix cache


@dataclass
class BlockTable:
    """A sequence's blocks, in order, and how many of them are registered in the prefix cache."""

    blocks: list[int] = field(default_factory=list)
    n_hashed: int = 0
    last_hash: bytes | None = None  # key of block n_hashed - 1 (the parent of the next one)


class BlockManager:
    def __init__(self, n_blocks: int, block_size: int):
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"a KV pool needs blocks: n_blocks={n_blocks}, block_size={block_size}")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(n_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(n_blocks))  # LRU first
        self.cached: dict[bytes, int] = {}  # full-block key -> block id
        self.hits = 0  # prompt tokens served from the prefix cache (since creation)
        self.queries = 0  # prompt tokens looked up

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_free(self) -> int:
        """Blocks no sequence holds (some of them still cached)."""
        return len(self.free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    # -- prefix lookup ----------------------------------------------------------------------------------------
    def _prefix(self, tokens: Seq[int], salt: str | None) -> tuple[list[int], bytes | None]:
        """Cached blocks of the longest prefix of `tokens`, never the block holding the last token (its logits
        must be computed), and the key of the last one."""
        bs, out, parent = self.block_size, [], None
        for b in range((len(tokens) - 1) // bs):
            key = block_hash(parent, tokens[b * bs : (b + 1) * bs], salt)
            bid = self.cached.get(key)
            if bid is None:
                break
            out.append(bid)
            parent = key
        return out, parent

    def can_allocate(self, tokens: Seq[int], salt: str | None = None, use_cache: bool = True) -> bool:
        hits = self._prefix(tokens, salt)[0] if use_cache else []
        idle_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return self.n_free - idle_hits >= self.blocks_for(len(tokens)) - len(hits)

    def allocate(self, tokens: Seq[int], salt: str | None = None, use_cache: bool = True) -> tuple[BlockTable, int]:
        """Blocks for `tokens`: the cached prefix shared, the rest fresh. Returns the table and how many
        tokens the cache already holds (a multiple of block_size)."""
        hits, parent = self._prefix(tokens, salt) if use_cache else ([], None)
        for b in hits:
            blk = self.blocks[b]
            if blk.ref_count == 0:
                del self.free[b]
            blk.ref_count += 1
        table = BlockTable(list(hits), len(hits), parent)
        for _ in range(self.blocks_for(len(tokens)) - len(hits)):
            table.blocks.append(self._take())
        if use_cache:
            self.queries += len(tokens)
            self.hits += len(hits) * self.block_size
        return table, len(hits) * self.block_size

    def _take(self) -> int:
        if not self.free:
            raise RealmError("the KV pool is out of blocks")  # callers check can_allocate / can_grow first
        b, _ = self.free.popitem(last=False)
        blk = self.blocks[b]
        if blk.hash is not None:  # evict: the least recently used cached block
            if self.cached.get(blk.hash) == b:
                del self.cached[blk.hash]
            blk.hash = None
        blk.ref_count = 1
        return b

    # -- growth and release -----------------------------------------------------------------------------------
    def can_grow(self, table: BlockTable, n_tokens: int) -> bool:
        return self.blocks_for(n_tokens) - len(table.blocks) <= self.n_free

    def grow(self, table: BlockTable, n_tokens: int) -> bool:
        """Make room for `n_tokens` in all; True when blocks were added (the GPU table row changed)."""
        added = False
        while len(table.blocks) < self.blocks_for(n_tokens):
            table.blocks.append(self._take())
            added = True
        return added

    def commit(self, table: BlockTable, tokens: Seq[int], n_computed: int, salt: str | None = None) -> None:
        """Register the blocks that `n_computed` tokens have filled in the prefix cache."""
        bs = self.block_size
        while table.n_hashed < n_computed // bs:
            b = table.n_hashed
            key = block_hash(table.last_hash, tokens[b * bs : (b + 1) * bs], salt)
            blk = self.blocks[table.blocks[b]]
            if blk.hash is None and key not in self.cached:
                blk.hash = key
                self.cached[key] = blk.id
            table.n_hashed += 1
            table.last_hash = key

    def trim(self, table: BlockTable, n_tokens: int) -> None:
        """Give back the blocks past the first `n_tokens` positions (those of rejected draft tokens). Never
        hashed blocks: only blocks of verified tokens are committed."""
        keep = max(self.blocks_for(n_tokens), table.n_hashed)
        while len(table.blocks) > keep:
            b = table.blocks.pop()
            blk = self.blocks[b]
            blk.ref_count -= 1
            if blk.ref_count == 0:
                self.free[b] = None
                if blk.hash is None:
                    self.free.move_to_end(b, last=False)

    def free_table(self, table: BlockTable) -> None:
        """Release a sequence's blocks. The tail goes to the LRU first, so a prefix outlives its tail; blocks
        without a key are reused before any cached one."""
        for b in reversed(table.blocks):
            blk = self.blocks[b]
            blk.ref_count -= 1
            if blk.ref_count == 0:
                self.free[b] = None
                if blk.hash is None:
                    self.free.move_to_end(b, last=False)
        table.blocks.clear()
        table.n_hashed, table.last_hash = 0, None


class PagedKVCache:
    """The pool on the GPU (per layer K and V) and the block table, with the BlockManager that assigns it."""

    def __init__(self, dev: Device, n_layer: int, kv_dim: int, n_blocks: int, block_size: int, n_slots: int,
                 max_blocks: int, beside: PagedKVCache | None = None, kv_type: str = "f16"):  # fmt: skip
        """`beside`: share that cache's block manager and block table (a draft model's KV: its pools mirror the
        target's blocks, so one allocation serves both). `kv_type`: "f16" (IEEE halves packed two to a u32: half the
        memory and attention's reads; logits within ~1e-4 relative RMS of f32's on our models) or "f32"."""
        self.dev, self.block_size, self.n_slots, self.max_blocks = dev, block_size, n_slots, max_blocks
        self.kv_type = kv_type
        self.manager = beside.manager if beside is not None else BlockManager(n_blocks, block_size)
        pool = kv_type_bytes(kv_type) * n_blocks * block_size * kv_dim
        if pool > min(dev.info.max_storage_binding, dev.info.max_buffer):
            raise RealmError(
                f"a KV pool of {n_blocks} blocks x {block_size} tokens needs {pool} bytes per layer, more than one "
                f"binding holds ({dev.info.max_storage_binding}); ask for fewer kv_cache_tokens"
            )
        self.k = [dev.create_buffer(pool, f"blk.{i}.k_pool") for i in range(n_layer)]
        self.v = [dev.create_buffer(pool, f"blk.{i}.v_pool") for i in range(n_layer)]
        if beside is not None:
            self.table: Buffer = beside.table
        else:
            self.table = dev.create_buffer(4 * n_slots * max_blocks, "block_table")
        self.bytes = 2 * n_layer * pool  # GPU memory of the pool (K and V, every layer)

    def write_row(self, slot: int, blocks: list[int]) -> None:
        """The GPU copy of slot `slot`'s block table (its blocks in order)."""
        if len(blocks) > self.max_blocks:
            raise RealmError(f"a sequence of {len(blocks)} blocks exceeds the table's {self.max_blocks}")
        self.dev.write(self.table, struct.pack(f"<{len(blocks)}I", *blocks), 4 * slot * self.max_blocks)
