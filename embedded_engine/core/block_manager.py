"""KV block allocator: free list, reference counts, block tables, prefix caching, swap space.

Prefix caching follows vLLM: each full block is named by a chained hash of the
previous block's hash and its own token ids; a freed block keeps its hash (and its
KV contents) until the allocator hands it out again, so a later request with the
same prefix reuses it. A hash match is confirmed by comparing the token ids, so a
hash collision can never serve the wrong KV.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from bottleneck_map.embedded_engine.core.sequence import Sequence


def block_hash(prev_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained hash of one full block (deterministic: ints and tuples hash without a seed)."""
    return hash((prev_hash, token_ids))


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class SwapPlan:
    """Block copies the model runner performs before this step's forward: (src, dst) pairs."""

    swap_out: list[tuple[int, int]] = field(default_factory=list)  # device block -> host block
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # host block -> device block

    def __bool__(self) -> bool:
        return bool(self.swap_out or self.swap_in)


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        num_swap_blocks: int = 0,
        bytes_per_block: int = 0,
        hash_fn=block_hash,
    ) -> None:
        self.bytes_per_block = bytes_per_block
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # LRU order
        self.hash_to_block: dict[int, int] = {}
        self.free_swap: list[int] = list(range(num_swap_blocks - 1, -1, -1))
        self.num_swap_blocks = num_swap_blocks
        self.prefix_hit_tokens = 0
        self.prefix_query_tokens = 0

    # -- accounting ------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free

    # -- allocation ------------------------------------------------------
    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give ``seq`` enough blocks to hold its computed tokens plus ``num_new_tokens``."""
        need = self.blocks_needed(seq, num_new_tokens)
        if need > self.num_free:
            raise RuntimeError(f"out of KV blocks: need {need}, {self.num_free} free")
        seq.block_table.extend(self._take_free() for _ in range(need))

    def free_seq(self, seq: Sequence) -> None:
        """Release a sequence's blocks (most recently used go to the back of the free list)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []

    # -- prefix caching --------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """On first admission, take the cached full blocks that match ``seq``'s prompt.

        Sets ``seq.num_computed_tokens`` to the tokens served from cache and returns
        that number. At least one prompt token is always left to compute, so the
        step produces the logits of the first output token.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        bs = self.block_size
        max_blocks = (seq.num_tokens - 1) // bs
        prev: int | None = None
        hits: list[int] = []
        hashes: list[int] = []
        for i in range(max_blocks):
            ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = self.hash_fn(prev, ids)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != ids:
                break
            hits.append(block_id)
            hashes.append(h)
            prev = h
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = hits
        seq.block_hashes = hashes
        seq.num_computed_tokens = len(hits) * bs
        self.prefix_query_tokens += seq.num_tokens
        self.prefix_hit_tokens += seq.num_computed_tokens
        return seq.num_computed_tokens

    def unmatch_prefix(self, seq: Sequence) -> None:
        """Undo :meth:`match_prefix` when the sequence could not be admitted after all."""
        self.prefix_hit_tokens -= seq.num_computed_tokens
        self.prefix_query_tokens -= seq.num_tokens
        self.free_seq(seq)
        seq.num_computed_tokens = 0

    def register_full_blocks(self, seq: Sequence) -> None:
        """After a step: name the blocks that became full so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        prev = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = self.hash_fn(prev, ids)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash, block.token_ids = h, ids
                self.hash_to_block.setdefault(h, block.block_id)
            seq.block_hashes.append(h)
            prev = h

    # -- swapping --------------------------------------------------------
    def can_swap_out(self, seq: Sequence) -> bool:
        return len(seq.block_table) <= len(self.free_swap)

    def swap_out(self, seq: Sequence, plan: SwapPlan) -> None:
        """Move ``seq``'s blocks to host swap blocks (the copies go into ``plan``)."""
        seq.swap_table = [self.free_swap.pop() for _ in seq.block_table]
        plan.swap_out.extend(zip(seq.block_table, seq.swap_table, strict=True))
        seq.trace.swapped_bytes += len(seq.swap_table) * self.bytes_per_block
        self.free_seq(seq)

    def can_swap_in(self, seq: Sequence) -> bool:
        return len(seq.swap_table) <= self.num_free

    def swap_in(self, seq: Sequence, plan: SwapPlan) -> None:
        seq.block_table = [self._take_free() for _ in seq.swap_table]
        plan.swap_in.extend(zip(seq.swap_table, seq.block_table, strict=True))
        seq.trace.swapped_bytes += len(seq.swap_table) * self.bytes_per_block
        self.free_swap.extend(seq.swap_table)
        seq.swap_table = []
        seq.block_hashes = []

    def free_swapped(self, seq: Sequence) -> None:
        self.free_swap.extend(seq.swap_table)
        seq.swap_table = []
