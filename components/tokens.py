"""The tokens OneGen adds to a tokenizer, the roles tokens play in training, and how the new rows
of the embedding matrix are born.

A token can be both GEN and RET: the model must learn to *emit* `[RQ]` (GEN), and the hidden
state at the position whose *input* is `[RQ]` is the query vector (RET). CTX tokens carry no loss.
"""

from __future__ import annotations

import enum

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

QUERY = "[RQ]"
DOCUMENT = "[RD]"
PARAGRAPH_OPEN = "<paragraph>"
PARAGRAPH_CLOSE = "</paragraph>"
ENTITY = "[EL]"

ALL = (QUERY, DOCUMENT, PARAGRAPH_OPEN, PARAGRAPH_CLOSE, ENTITY)

# OneGen initialises each new row from the mean embedding of a short description of the token:
# a new token then starts near words that mean what it does, not at a random point.
DESCRIPTIONS = {
    QUERY: "search for a relevant document",
    DOCUMENT: "the content of this document",
    PARAGRAPH_OPEN: "beginning of retrieved paragraph",
    PARAGRAPH_CLOSE: "end of retrieved paragraph",
    ENTITY: "link this mention to an entity",
}


class Role(enum.IntFlag):
    """What a token is trained for. Flags, because `[RQ]` is GEN and RET at once."""

    CTX = 0
    GEN = 1
    RET = 2


def token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Id of each special token; a clear error if the tokenizer was never given them."""
    ids = {}
    for token in ALL:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token!r}: call add_special_tokens(model, tokenizer) first")
        ids[token] = tid
    return ids


def add_tokens_to_tokenizer(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add the OneGen tokens the tokenizer lacks (for tokenizer-only uses such as validating data);
    returns those added. Idempotent. With a model, use `add_special_tokens`, which grows it too."""
    missing = [t for t in ALL if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return missing


def add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Add the OneGen tokens to `tokenizer` and grow `model` to match. Idempotent.

    A token gets a fresh row when the tokenizer lacked it or the model has no row for it yet (the
    tokenizer may have been given the tokens alone, by `add_tokens_to_tokenizer`). New input rows,
    and new output rows when the head is not tied, are set to the mean embedding of the token's
    description. Returns the ids of the rows initialised.
    """
    added = add_tokens_to_tokenizer(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    ids = token_ids(tokenizer)
    fresh = [t for t in ALL if t in added or ids[t] >= rows]
    if not fresh:
        return []
    # Rows are padded to a multiple of 64 (tensor-core friendly); the spare rows are never indexed.
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)

    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings()
    tied = outputs is None or outputs.weight is inputs
    with torch.no_grad():
        for token in fresh:
            desc = torch.tensor(tokenizer(DESCRIPTIONS[token], add_special_tokens=False)["input_ids"], device=inputs.device)
            inputs[ids[token]] = inputs[desc].mean(dim=0)
            if not tied:
                outputs.weight[ids[token]] = outputs.weight[desc].mean(dim=0)
    return [ids[t] for t in fresh]


def untie_head(model: PreTrainedModel) -> bool:
    """Give the LM head its own matrix when it shares the input embedding's (SmolLM2 does). Returns
    whether it was tied.

    `[RQ]`'s input row shapes the query vector (the state at the position whose input is `[RQ]`);
    its output row decides when the model emits `[RQ]`. Tied, they are one row, and the retrieval
    loss's gradient on it (measured on smollm2-cpu: ~20x the next-token loss's) pulls emission
    along. Untied, each row follows its own loss: on the dev walks the joint model's cross-entropy
    at `[RQ]` targets went from 9.96 to 7.96 nats (the plain LM's: 0.80); the rest of that gap is
    the LoRA weights, which both losses share. The copy costs one [vocab, H] matrix of memory.
    """
    head, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not inputs.weight:
        return False
    head.weight = torch.nn.Parameter(inputs.weight.detach().clone(), requires_grad=inputs.weight.requires_grad)
    # Saved and reloaded as two matrices; transformers re-ties on load or resize while this is set.
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False
    return True
