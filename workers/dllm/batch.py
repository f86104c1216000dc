"""Packing rows of different requests into one forward: left-padded inputs, right-padded past KV, 4-D masks.

A row's current block always sits at the end of its input, so left padding lines every row's block up with
the last `num_logits` positions. Padded past slots and padded inputs are masked out; a padded query attends
only to itself (an all-False row would turn softmax into NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workers.dllm.model import KV


@dataclass
class Row:
    """One row of a batched forward."""

    tokens: torch.Tensor  # long [T], the input span
    start: int  # absolute position of tokens[0]
    grid: int  # attention group size in positions (block-causal); 0 = full attention
    past: KV | None  # per layer [kv_heads, K, head_dim], final KV of positions [0, start)
    num_logits: int  # logits wanted, the last ones of the span
    keep_kv: int = 0  # positions at the start of the span whose KV becomes final (pending tokens)
    embeds: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset in span, [n, hidden]): image rows

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def past_len(self) -> int:
        return 0 if self.past is None else self.past[0][0].shape[1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # bool [B, 1, T, K + T]
    past: KV | None  # per layer [B, kv_heads, K, head_dim]
    num_logits: int
    keep_kv: bool
    embeds: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)  # (row, column, [n, hidden]) overrides


def plan_batches(rows: list[Row], max_batch: int, max_padding_ratio: float) -> list[list[int]]:
    """Group row indices so that each forward computes at most `max_padding_ratio` x the real input tokens."""
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is not None and len(group) < max_batch:
            real = sum(rows[j].length for j in group) + rows[i].length
            if (len(group) + 1) * rows[i].length <= max_padding_ratio * real:  # rows[i] is the longest so far
                group.append(i)
                continue
        groups.append([i])
    return groups


def build_batch(rows: list[Row], pad_id: int, device: torch.device) -> Batch:
    """Pad `rows` to one forward's tensors."""
    max_len = max(r.length for r in rows)
    max_past = max(r.past_len for r in rows)
    input_ids = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), max_len), dtype=torch.long)
    real = torch.zeros((len(rows), max_len), dtype=torch.bool)
    embeds = []
    for i, row in enumerate(rows):
        offset = max_len - row.length
        input_ids[i, offset:] = row.tokens
        position_ids[i, offset:] = torch.arange(row.start, row.start + row.length)
        real[i, offset:] = True
        embeds.extend((i, offset + local, rows_embeds) for local, rows_embeds in row.embeds)
    mask = torch.cat([_past_mask(rows, max_len, max_past, real), _span_mask(rows, position_ids, real)], dim=-1)
    return Batch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask[:, None].to(device),
        past=_pad_past(rows, max_past),
        num_logits=max(r.num_logits for r in rows),
        keep_kv=any(r.keep_kv for r in rows),
        embeds=embeds,
    )


def _past_mask(rows: list[Row], max_len: int, max_past: int, real: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros((len(rows), max_len, max_past), dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, :, : row.past_len] = True  # past positions all precede the span: visible under both attentions
    return mask & real[:, :, None]


def _span_mask(rows: list[Row], position_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor([max(r.grid, 1) for r in rows])[:, None]
    groups = position_ids // grid
    causal = groups[:, None, :] <= groups[:, :, None]  # [B, query, key]: key's group not after query's
    is_full = torch.tensor([r.grid == 0 for r in rows])[:, None, None]
    mask = (causal | is_full) & real[:, :, None] & real[:, None, :]
    eye = torch.eye(real.shape[1], dtype=torch.bool)[None]
    return mask | (eye & ~real[:, :, None])


def _pad_past(rows: list[Row], max_past: int) -> KV | None:
    if max_past == 0:
        return None
    if len(rows) == 1:
        return [(k[None], v[None]) for k, v in rows[0].past]
    template = next(r.past for r in rows if r.past is not None)
    out: KV = []
    for layer, (k_ref, v_ref) in enumerate(template):
        keys = k_ref.new_zeros((len(rows), k_ref.shape[0], max_past, k_ref.shape[2]))
        values = v_ref.new_zeros((len(rows), v_ref.shape[0], max_past, v_ref.shape[2]))
        for i, row in enumerate(rows):
            if row.past is not None:
                keys[i, :, : row.past_len] = row.past[layer][0]
                values[i, :, : row.past_len] = row.past[layer][1]
        out.append((keys, values))
    return out


def row_logits(logits: torch.Tensor, rows: list[Row], index: int) -> torch.Tensor:
    """Row `index`'s wanted logits: [num_logits, vocab], aligned to the end of its span."""
    return logits[index, logits.shape[1] - rows[index].num_logits :]


def row_new_kv(kv: KV, rows: list[Row], index: int, past_len: int, span_len: int) -> KV:
    """Row `index`'s final KV (its first keep_kv input positions) out of the batched cache."""
    row = rows[index]
    start = past_len + span_len - row.length
    return [(k[index, :, start : start + row.keep_kv], v[index, :, start : start + row.keep_kv]) for k, v in kv]
