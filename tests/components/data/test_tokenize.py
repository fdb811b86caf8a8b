import pytest
import torch

from components import tokens as st
from components.data.collate import Collator, document_key
from components.data.screening import RowError
from components.data.tokenize import IGNORE
from tests.conftest import make_example


@pytest.fixture
def formatter(tiny_model):
    return tiny_model.formatter


def decode(formatter, ids):
    return formatter.tokenizer.decode(ids)


def test_labels_are_targets_only_on_generated_tokens(formatter, small_corpus):
    example = make_example("Where was she born?[RQ] In London.", [["ada"]], [["byron"]])
    enc = formatter.example(example, small_corpus, max_length=512)
    ids, labels = enc.input_ids, enc.labels
    q = enc.query_positions[0]
    prompt = formatter.prompt(example.prompt)

    assert ids[: len(prompt)] == prompt  # the tokenizer's own chat template
    assert all(label == IGNORE for label in labels[: len(prompt)])
    assert ids[q] == formatter.query_id and labels[q] == formatter.query_id  # the model must learn to emit [RQ]
    passage = formatter.passage(small_corpus["ada"])
    assert ids[q + 1 : q + 1 + len(passage)] == passage  # the inserted passage follows [RQ] ...
    assert all(label == IGNORE for label in labels[q + 1 : q + 1 + len(passage)])  # ... and is never a target
    assert ids[q + 1] == formatter.special[st.PARAGRAPH_OPEN] and labels[q + 1] == IGNORE
    targets = [t for t, label in zip(ids, labels) if label != IGNORE]
    assert decode(formatter, targets) == "Where was she born?[RQ] In London.<|im_end|>"
    assert ids[-1] in formatter.eos_ids  # the turn ends at EOS; the template's trailing newline is not trained


def test_each_hop_inserts_its_first_positive(formatter, small_corpus):
    example = make_example("Who?[RQ] Ada. Where?[RQ] London.", [["ada", "byron"], ["london"]], [["paris"], []])
    enc = formatter.example(example, small_corpus, 512)
    assert len(enc.query_positions) == 2
    for q, doc in zip(enc.query_positions, ["ada", "london"]):
        passage = formatter.passage(small_corpus[doc])
        assert enc.input_ids[q + 1 : q + 1 + len(passage)] == passage
    assert enc.doc_ids == ["ada", "byron", "paris", "london"]
    assert enc.positives == [[0, 1], [3]] and enc.negatives == [[2], []]
    for tokens in enc.doc_input_ids:
        assert tokens[-1] == formatter.document_id


def test_hard_negatives_caps_each_hops_negatives_at_the_first_listed(formatter, small_corpus):
    example = make_example("Who?[RQ] Ada. Where?[RQ] London.", [["ada"], ["london"]], [["paris", "byron"], ["paris"]])
    enc = formatter.example(example, small_corpus, 512, hard_negatives=1)
    assert enc.doc_ids == ["ada", "paris", "london"]  # byron, the first hop's second negative, is not embedded
    assert enc.positives == [[0], [2]] and enc.negatives == [[1], [1]]
    assert formatter.example(example, small_corpus, 512, hard_negatives=0).doc_ids == ["ada", "london"]
    assert formatter.example(example, small_corpus, 512).doc_ids == ["ada", "paris", "byron", "london"]


def test_a_linking_row_trains_each_el_with_nothing_inserted_after_it(formatter, small_corpus):
    example = make_example("Ada Lovelace[EL] London[EL]", [["ada"], ["london"]], [["byron"], []],
                           prompt="Link the entities in this text:\nAda Lovelace was born in London.")
    enc = formatter.example(example, small_corpus, 512)
    ids, labels = enc.input_ids, enc.labels
    first, second = enc.query_positions
    assert ids[first] == ids[second] == formatter.special[st.ENTITY]
    assert labels[first] == labels[second] == formatter.special[st.ENTITY]  # GEN: the model learns to emit it
    # No passage: the next mention follows [EL] at once, and is itself a target.
    assert formatter.special[st.PARAGRAPH_OPEN] not in ids
    assert decode(formatter, ids[first + 1 : second]).strip() == "London" and labels[first + 1] != IGNORE
    assert enc.doc_ids == ["ada", "byron", "london"] and enc.positives == [[0], [2]] and enc.negatives == [[1], []]
    batch = Collator(formatter.pad_id)([enc])
    assert batch.query_cols.tolist() == [first, second]  # the contrastive loss reads the [EL] states


def test_a_linking_query_read_one_token_later_is_the_next_copied_token_or_the_end_of_turn(formatter, small_corpus):
    from components.config import FormatConfig
    from components.data.tokenize import Formatter

    later = Formatter(formatter.tokenizer, FormatConfig(link_query_offset=1))
    example = make_example("Ada Lovelace[EL] lived in London[EL]", [["ada"], ["london"]], [["byron"], []],
                           prompt="Link the entities in this text:\nAda Lovelace lived in London")
    at_el, enc = formatter.example(example, small_corpus, 512), later.example(example, small_corpus, 512)
    assert enc.input_ids == at_el.input_ids and enc.labels == at_el.labels  # only where the query is read moves
    assert enc.query_positions == [p + 1 for p in at_el.query_positions]
    first, last = enc.query_positions
    assert decode(formatter, enc.input_ids[first : first + 1]) == " lived" and enc.input_ids[last] in formatter.eos_ids
    # [RQ]'s query stays at [RQ]: a passage, not the answer, follows it
    rag = make_example("Where was she born?[RQ] In London.", [["ada"]])
    assert later.example(rag, small_corpus, 512).query_positions == formatter.example(rag, small_corpus, 512).query_positions


def test_documents_and_passages_are_truncated_to_the_format(formatter, small_corpus):
    from components.config import FormatConfig
    from components.data.tokenize import Formatter

    short = Formatter(formatter.tokenizer, FormatConfig(max_passage_tokens=3, max_document_tokens=4))
    doc = small_corpus["ada"]
    assert len(short.document(doc)) == 5 and short.document(doc)[-1] == short.document_id
    assert len(short.passage(doc)) == 5 and short.passage(doc)[-1] == short.special[st.PARAGRAPH_CLOSE]


def test_a_retrieval_that_truncation_would_cut_is_an_error(formatter, small_corpus):
    example = make_example("Filler. " * 40 + "Search[RQ] found.", [["ada"]])
    full = len(formatter.example(example, small_corpus, 10_000).input_ids)
    with pytest.raises(RowError, match="max_length=100") as err:
        formatter.example(example, small_corpus, max_length=100, row=7)
    assert (err.value.row, err.value.kind) == (7, "truncated_retrieval")
    enc = formatter.example(example, small_corpus, max_length=full - 2)  # cuts only the end of the answer
    assert enc.truncated_tokens == 2 and len(enc.input_ids) == full - 2


def test_standalone_query_is_asked_as_a_training_row_asks_it(formatter, small_corpus):
    ids = formatter.query("capital of France")
    prompt = formatter.prompt([{"role": "user", "content": "capital of France"}])
    assert ids[-1] == formatter.query_id and ids[: len(prompt)] == prompt
    assert formatter.tokenizer.decode(ids[len(prompt):-1]).strip() == "capital of France"  # restated, then [RQ]
    row = formatter.example(make_example("capital of France[RQ] Paris.", [["paris"]], prompt="capital of France"), small_corpus, 512)
    assert row.input_ids[: row.query_positions[0] + 1] == ids  # the same tokens up to and with [RQ]


def test_collator_pads_dynamically_to_a_multiple_of_8(formatter, small_corpus):
    short = formatter.example(make_example("Hm?[RQ] London.", [["ada"]], [["paris"]], example_id="a"), small_corpus, 4096)
    long = formatter.example(make_example("Hmm " * 30 + "?[RQ] London.", [["london"]], [["ada"]], example_id="b"), small_corpus, 4096)
    batch = Collator(formatter.pad_id)([short, long])

    width = len(long.input_ids)
    assert batch.input_ids.shape == (2, -(-width // 8) * 8)  # the longest row, rounded up; never max_length
    assert batch.attention_mask.sum(1).tolist() == [len(short.input_ids), width]
    assert (batch.labels[0, len(short.input_ids):] == IGNORE).all()
    assert batch.doc_input_ids.shape[1] % 8 == 0
    # "ada" is shared by both rows: embedded once
    assert batch.doc_input_ids.shape[0] == 3
    assert batch.input_ids[batch.query_rows, batch.query_cols].tolist() == [formatter.query_id] * 2
    assert batch.doc_input_ids[torch.arange(3), batch.doc_last].tolist() == [formatter.document_id] * 3
    docs = ["ada", "paris", "london"]
    assert batch.doc_keys.tolist() == [document_key(d) for d in docs]
    assert [docs[i] for i in batch.positive.tolist()] == ["ada", "london"]
    assert [[docs[i] for i in row] for row in batch.hard_negatives.tolist()] == [["paris"], ["ada"]]


def _contains(tokens: list[int], part: list[int]) -> bool:
    return any(tokens[i : i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


def test_a_redaction_is_cut_from_the_inserted_passage_and_the_embedded_document_only(formatter, small_corpus):
    cut = "was born in London"
    example = make_example("Who?[RQ] Ada. Where?[RQ] Ada.", [["ada"], ["ada"]], redact=[cut, None])
    enc = formatter.example(example, small_corpus, 512)
    inner = formatter.text(f" {cut}")[1:]  # the phrase's tokens as they occur inside the text

    # hop 0 inserts and embeds the redacted copy; hop 1 the whole document: two document rows, one id
    assert enc.doc_ids == ["ada", "ada"] and enc.positives == [[0], [1]]
    redacted_row, whole_row = enc.doc_input_ids
    assert not _contains(redacted_row, inner) and _contains(whole_row, inner)
    assert decode(formatter, redacted_row) == "Ada Lovelace\nAda Lovelace in 1815.[RD]"
    first, second = enc.query_positions
    assert not _contains(enc.input_ids[first:second], inner) and _contains(enc.input_ids[second:], inner)
    assert cut in small_corpus["ada"].text  # the corpus, and so the index, keeps it

    # In a batch with a row that uses the whole document, both rows are embedded, with one key.
    whole = formatter.example(make_example("Who?[RQ] Ada.", [["ada"]], example_id="b"), small_corpus, 512)
    batch = Collator(formatter.pad_id)([enc, whole])
    assert batch.doc_keys.tolist() == [document_key("ada")] * 2 and batch.positive.tolist() == [0, 1, 1]
