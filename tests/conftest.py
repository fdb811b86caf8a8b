"""Shared fixtures: the SmolLM2 tokenizer (converted once, cached) and tiny random Llamas built
from a config, so the suite stays fast on 2 cores."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from components.data.corpus import Corpus
from components.data.schema import Document, Example
from components.model.base import smollm2_tokenizer, tiny_llama
from components.model.onegen import OneGenModel
from components.model.train_loop import TrainResult
from tests.fixtures.servers import mlflow_server, s3_server  # noqa: F401  (session fixtures: one of each per run)


@pytest.fixture(scope="session")
def base_tokenizer():
    """The SmolLM2 tokenizer without OneGen's tokens. Do not mutate: use `tokenizer`."""
    return smollm2_tokenizer()


@pytest.fixture
def tokenizer(base_tokenizer):
    import copy

    return copy.deepcopy(base_tokenizer)


@pytest.fixture
def tiny_model(tokenizer) -> OneGenModel:
    """A OneGen model around a fresh 2-layer random Llama (tied embeddings, like SmolLM2)."""
    return OneGenModel.build(tiny_llama(tokenizer), tokenizer)


COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
ANIMALS = ["cat", "dog", "horse", "eagle"]
NAMES = ["Zorvak", "Mibble", "Quenta", "Darlo", "Fesk", "Hurn", "Ippa", "Jolt", "Kesh", "Lumo", "Marn", "Nopa",
         "Orl", "Pim", "Quill", "Rast", "Sorn", "Tupp", "Ulk", "Vern", "Wisp", "Xal", "Yorv", "Zem",
         "Abo", "Bix", "Cug", "Dov", "Eln", "Fro", "Gub", "Hax"]  # fmt: skip


# The answer searches after a lead-in whose length depends on the animal, so rows of a batch
# retrieve at different steps.
LEAD_INS = {"cat": "Checking.", "dog": "Let me look.", "horse": "I will search the records for this one first.", "eagle": "One moment."}


CRANES = ["Crane (bird)", "Crane (machine)"]


def crane_entities() -> Corpus:
    """A tiny named-entity knowledge base whose surface form "crane" names two entities."""
    about = {"Crane (bird)": "The crane is a wading bird.", "Crane (machine)": "A crane lifts heavy loads.",
             "Heron": "The heron is a wading bird.", "Steel": "Steel is an alloy of iron."}
    return Corpus(Document(id=t, title=t, text=text) for t, text in about.items())


def synthetic_retrieval() -> tuple[Corpus, list[Example]]:
    """32 documents, one per (colour, animal) pair, and a question whose answer needs the right one:
    retrieval must match a conjunction of two words, and the answer must be copied from the passage."""
    docs, examples = [], []
    for i, (color, animal) in enumerate(itertools.product(COLORS, ANIMALS)):
        name = NAMES[i]
        docs.append(Document(id=f"d{i}", title=name, text=f"The {color} {animal} is called {name}."))
        examples.append(
            Example(
                id=f"q{i}",
                messages=[
                    {"role": "user", "content": f"What is the {color} {animal} called?"},
                    {"role": "assistant", "content": f"{LEAD_INS[animal]}[RQ] It is called {name}."},
                ],
                positives=[[f"d{i}"]],
            )
        )
    return Corpus(docs), examples


@dataclass
class TrainedTiny:
    model: OneGenModel
    corpus: Corpus
    examples: list[Example]
    result: TrainResult
    recall_before: float
    recall_after: float


def _recall(model: OneGenModel, corpus: Corpus, rows) -> float:
    """Teacher-forced Recall@1 of the rows' [RQ] vectors among the corpus's [RD] vectors."""
    from components.eval.metrics import recall_at_k
    from components.eval.teacher_forced import teacher_forced
    from components.retrieval.topk import top_k

    forced = teacher_forced(model, rows)
    _, top = top_k(forced.queries.numpy(), model.embed_documents(list(corpus)).numpy(), 1)
    return recall_at_k([[corpus.ids[p] for p in row] for row in top], forced.gold, 1)


@pytest.fixture(scope="session")
def trained_tiny(base_tokenizer) -> TrainedTiny:
    """A tiny Llama trained once per test run (~1 min) on `synthetic_retrieval`: it has learnt to
    emit [RQ], to retrieve the right document and to copy the answer from the passage."""
    import copy
    import random

    import torch

    from components.config import LossConfig
    from components.data.collate import Collator
    from components.model.train_loop import train

    tokenizer = copy.deepcopy(base_tokenizer)
    model = OneGenModel.build(tiny_llama(tokenizer), tokenizer)
    corpus, examples = synthetic_retrieval()
    rows = [model.formatter.example(e, corpus, 256) for e in examples]
    before = _recall(model, corpus, rows)
    collate, rng = Collator(model.formatter.pad_id), random.Random(0)
    batches = (collate(rng.sample(rows, 8)) for _ in iter(int, 1))
    result = train(model, torch.optim.AdamW(model.parameters(), lr=3e-3), batches, LossConfig(temperature=0.05), max_steps=300)
    model.eval()
    return TrainedTiny(model, corpus, examples, result, before, _recall(model, corpus, rows))


@pytest.fixture
def small_corpus() -> Corpus:
    return Corpus(
        [
            Document(id="ada", title="Ada Lovelace", text="Ada Lovelace was born in London in 1815."),
            Document(id="byron", title="Lord Byron", text="Lord Byron was a poet, Ada's father."),
            Document(id="london", title="London", text="London is the capital of England."),
            Document(id="paris", title="Paris", text="Paris is the capital of France."),
        ]
    )


def make_example(content: str, positives, negatives=(), example_id: str = "ex1", prompt: str = "Where was Ada born?",
                 redact=()) -> Example:
    return Example(
        id=example_id,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": content}],
        positives=[list(p) for p in positives],
        negatives=[list(n) for n in negatives],
        redact=list(redact),
    )
