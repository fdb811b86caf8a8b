"""SpareLayer: what a layer of the decoder's cache holds after each way rows change, against plain
tensors doing the same; and that the common changes reuse its buffer instead of copying the batch."""

import pytest
import torch

from components.generation.kv_cache import SpareLayer, add_row, new_cache

HEADS, DIM = 2, 4


def slots(rows: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, HEADS, n, DIM, generator=torch.Generator().manual_seed(seed))


def filled_layer(rows: int = 4, n: int = 5, dtype=None) -> tuple[SpareLayer, torch.Tensor]:
    layer = SpareLayer(dtype)
    keys = slots(rows, n, 0)
    layer.update(keys, -keys)
    return layer, keys


def test_update_appends_into_room_without_moving_the_past():
    layer, keys = filled_layer()
    buffer = layer._keys.data_ptr()
    more = slots(4, 1, 1)
    k, v = layer.update(more, -more)
    assert torch.equal(k, torch.cat([keys, more], dim=2)) and torch.equal(v, -k)
    assert layer._keys.data_ptr() == buffer and layer.get_seq_length() == 6


def test_a_finished_row_is_overwritten_by_one_from_the_end_in_place():
    layer, keys = filled_layer()
    buffer = layer._keys.data_ptr()
    layer.batch_select_indices(torch.tensor([0, 3, 2]))  # row 1 finished: row 3 takes its place
    assert torch.equal(layer.keys, keys[[0, 3, 2]]) and torch.equal(layer.values, -keys[[0, 3, 2]])
    assert layer._keys.data_ptr() == buffer


def test_an_order_that_would_overwrite_a_row_before_it_moves_is_gathered():
    layer, keys = filled_layer()
    layer.batch_select_indices(torch.tensor([1, 0, 3]))
    assert torch.equal(layer.keys, keys[[1, 0, 3]]) and torch.equal(layer.values, -keys[[1, 0, 3]])


def test_a_row_joins_into_the_room_a_finished_row_left():
    layer, keys = filled_layer()
    layer.batch_select_indices(torch.tensor([0, 1, 2]))
    buffer, joining = layer._keys.data_ptr(), slots(1, 5, 2)
    layer.add_row(joining, -joining)
    assert torch.equal(layer.keys, torch.cat([keys[:3], joining])) and torch.equal(layer.values, -layer.keys)
    assert layer._keys.data_ptr() == buffer
    grown = slots(1, 5, 3)  # no spare row left: one copy, with room for as many rows again
    layer.add_row(grown, -grown)
    assert layer.keys.shape[0] == 5 and layer._keys.shape[0] == 8 and torch.equal(layer.keys[4], grown[0])


def test_compaction_gathers_into_a_buffer_the_next_step_appends_to():
    layer, keys = filled_layer()
    keep = torch.tensor([[1, 3], [0, 4], [2, 3], [0, 1]])
    layer.compact(keep)
    expected = torch.stack([keys[b, :, keep[b]] for b in range(4)])
    assert torch.equal(layer.keys, expected) and torch.equal(layer.values, -expected)
    buffer, more = layer._keys.data_ptr(), slots(4, 1, 4)
    layer.update(more, -more)
    assert layer._keys.data_ptr() == buffer and torch.equal(layer.keys[:, :, 2:], more)


def test_keys_and_values_are_stored_in_the_cache_dtype():
    layer, keys = filled_layer(dtype=torch.bfloat16)
    assert layer.keys.dtype == layer.values.dtype == torch.bfloat16
    assert torch.equal(layer.keys, keys.to(torch.bfloat16))
    cache = new_cache(torch.bfloat16)
    k, _ = cache.update(keys, -keys, 0)
    assert k.dtype == torch.bfloat16


@pytest.mark.parametrize("lead", [False, True])
def test_add_row_gives_the_new_row_masked_padding_or_the_lead_in(lead):
    cache = new_cache()
    keys = slots(2, 6, 5)
    cache.update(keys, -keys, 0)
    mask = torch.ones(2, 6, dtype=torch.long)
    lead_kv = [(slots(1, 3, 6), -slots(1, 3, 6))] if lead else None
    mask = add_row(cache, mask, lead_kv)
    assert mask[2].tolist() == ([0, 0, 0, 1, 1, 1] if lead else [0] * 6)
    new = cache.layers[0].keys[2]
    assert torch.equal(new[:, 3:], lead_kv[0][0][0]) if lead else torch.equal(new, torch.zeros_like(new))
    assert torch.equal(cache.layers[0].keys[:2], keys)
