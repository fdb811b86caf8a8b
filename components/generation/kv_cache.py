"""The decoder's KV cache: HF's `DynamicCache`, with layers that keep spare room along the sequence.

HF's `DynamicLayer` concatenates each step's keys and values to the whole past, so every decode
step copies the entire cache of every layer (at 8 rows of 400 slots, 140 MB a step, as much memory
traffic as the bf16 weights themselves). A `SpareLayer` writes the new slots into room it reserved
(growing by half when full), and hands attention a view of the filled part: the past is copied
only when the room runs out, or when the decoder rearranges rows (a row joins or leaves, the cache
is compacted), which it does by assigning whole tensors, as it would to a `DynamicLayer`.
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
