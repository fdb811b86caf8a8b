"""The decoder's KV cache: HF's `DynamicCache`, with layers that keep spare room along the sequence.

HF's `DynamicLayer` concatenates each step's keys and values to the whole past, so every decode
step copies the entire cache of every layer (at 8 rows of 400 slots, 140 MB a step, as much memory
traffic as the bf16 weights themselves). A `SpareLayer` writes the new slots into room it reserved
(growing by half when full), and hands attention a view of the filled part: the past is copied
only when the room runs out, or when the decoder rearranges rows: a row that joins or leaves costs
one copy into a buffer that keeps its room; compaction assigns whole tensors, as it would to a
`DynamicLayer`, and the next step reserves room again.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_ROOM = 64  # slots reserved beyond the need at least


class SpareLayer(DynamicLayer):
    # keys and values are views of the filled part of their storage (each its own: a caller may
    # assign one before reading the other)
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._keys is None else self._keys[:, :, : self._filled[0]]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._keys = value
        self._filled = (_length(value), getattr(self, "_filled", (0, 0))[1])

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[:, :, : self._filled[1]]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = value
        self._filled = (getattr(self, "_filled", (0, 0))[0], _length(value))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self._filled[0] if self.is_initialized and self._keys is not None else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.get_seq_length(), self.get_seq_length() + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._reserve(key_states, value_states, end)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self._filled = (end, end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices`, room included (a finished row leaves: one copy, none later)."""
        if self.get_seq_length() > 0:
            self._keys, self._values = self._keys[indices], self._values[indices]

    def add_row(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One more row at the end ([1, heads, filled, head dim]), into a copy with room."""
        room = max(self._keys.shape[-2], self._filled[0] + MIN_ROOM)
        for name, row in (("_keys", keys), ("_values", values)):
            old = getattr(self, name)
            grown = old.new_empty((old.shape[0] + 1, old.shape[1], room, old.shape[3]))
            grown[:-1, :, : self._filled[0]] = old[:, :, : self._filled[0]]
            grown[-1:, :, : self._filled[0]] = row
            setattr(self, name, grown)

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, need: int) -> None:
        room = max(need + MIN_ROOM, need * 3 // 2)
        keys = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[3]))
        values = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[3]))
        length = self.get_seq_length()
        if length:
            keys[:, :, :length], values[:, :, :length] = self.keys, self.values
        self._keys, self._values, self._filled = keys, values, (length, length)


def _length(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None or tensor.dim() < 2 else tensor.shape[-2]


def new_cache() -> DynamicCache:
    """An empty cache whose layers (made as the first forward reaches them) are `SpareLayer`s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = SpareLayer
    return cache


def plain_layers(cache: DynamicCache) -> bool:
    """Every layer holds every slot (no sliding window): rows may be sliced, merged and compacted."""
    return all(type(layer) in (DynamicLayer, SpareLayer) for layer in cache.layers)


def lead_in_kv(stack, ids: list[int], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of `ids` fed alone from position 0, per layer, [1, heads, len(ids), head dim]."""
    cache = DynamicCache()
    stack(input_ids=torch.tensor([ids], device=device), position_ids=torch.arange(len(ids), device=device)[None],
          past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def add_row(cache: DynamicCache, mask: torch.Tensor, lead: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Room for one more row at the end of the batch: masked padding slots, with `lead`'s keys and
    values (per layer, [1, heads, L, head dim]) in its last L slots when given. Returns the new mask."""
    rows, width = mask.shape
    filled = 0 if lead is None else lead[0][0].shape[-2]
    if lead is not None and not cache.layers:  # nothing fed yet: layers of padding for the rows there are
        for i, (keys, values) in enumerate(lead):
            cache.update(keys.new_zeros((rows, keys.shape[1], width, keys.shape[3])),
                         values.new_zeros((rows, values.shape[1], width, values.shape[3])), i)
    if filled > width:  # the others get padding on the left, where it changes nothing
        mask = torch.cat([mask.new_zeros((rows, filled - width)), mask], dim=1)
        for layer in cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                setattr(layer, name, torch.cat([tensor.new_zeros((*tensor.shape[:2], filled - width, tensor.shape[3])), tensor], dim=2))
        width = filled
    row = mask.new_zeros((1, width))
    if filled:
        row[0, width - filled :] = 1
    for n, layer in enumerate(cache.layers):
        if not layer.is_initialized or layer.keys is None:
            continue
        new = []
        for part, tensor in enumerate((layer.keys, layer.values)):
            new.append(tensor.new_zeros((1, *tensor.shape[1:])))
            if filled:
                new[-1][:, :, width - filled :] = lead[n][part]
        if isinstance(layer, SpareLayer):  # into a buffer that keeps its room
            layer.add_row(*new)
        else:
            layer.keys, layer.values = torch.cat([layer.keys, new[0]]), torch.cat([layer.values, new[1]])
    return torch.cat([mask, row])
