"""The whole build on hand-written rows (fast, no MiniLM: the negative miner is injected), and one
build from the real installed packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.corpus import Corpus
from components.data.screening import ScreenReport, iter_examples, iter_linked_texts, load_corpus
from components.datasets.build import BuildConfig, build_datasets, split_of
from components.datasets.wordnet import read_wordnet
from tests.components.datasets.samples import ARTICLES, QUESTIONS, FirstOthers, kept_ids
from tests.components.datasets.wordnet_sample import write_wordnet


def test_split_is_a_stable_function_of_the_id():
    ids = [f"{i:016x}" for i in range(2000)]
    dev = [q for q in ids if split_of(q, 0.5) == "dev"]
    assert dev == [q for q in ids if split_of(q, 0.5) == "dev"]
    assert 0.45 < len(dev) / len(ids) < 0.55
    assert all(split_of(q, 0.0) == "train" for q in ids) and all(split_of(q, 1.0) == "dev" for q in ids)
    # Growing dev only moves questions into dev: a smaller dev is a subset of a larger one.
    assert set(q for q in ids if split_of(q, 0.2) == "dev") <= set(dev)


def _build(out: Path, **kwargs):
    return build_datasets(out, BuildConfig(**kwargs), summaries=ARTICLES, questions=QUESTIONS, miner=FirstOthers(kept_ids()),
                          wordnet=read_wordnet(write_wordnet(out.parent / f"{out.name}-wordnet")))


@pytest.mark.timeout(60)
def test_build_writes_clean_files_and_counts_them(tmp_path):
    report = _build(tmp_path, dev_fraction=0.5)

    corpus, corpus_report = load_corpus(tmp_path / "corpus.jsonl")
    assert corpus.ids == kept_ids() and corpus_report.quarantined == 0
    read = {}
    for name in ("train", "dev", "fanoutqa_train", "fanoutqa_dev", "leaves_train", "questions_train", "ict_train"):
        screen = ScreenReport(source=name)
        read[name] = list(iter_examples(tmp_path / f"{name}.jsonl", corpus, screen))
        assert screen.quarantined == 0, name
    ids = {name: {e.id for e in examples} for name, examples in read.items()}
    parts = ids["fanoutqa_train"] | ids["leaves_train"] | ids["questions_train"] | ids["ict_train"]
    assert ids["train"] == parts and ids["dev"] == ids["fanoutqa_dev"]
    # Each in-corpus leaf of a training question is asked alone, and the question is asked as one
    # query once per gold page; nothing of a dev question is.
    assert ids["leaves_train"] == {f"q-nested-leaf{n}" for n in range(4)} and ids["fanoutqa_train"] == {"q-nested"}
    assert ids["questions_train"] == {f"q-nested-question{n}" for n in range(4)}
    first = next(e for e in read["leaves_train"] if e.id == "q-nested-leaf0")
    assert first.prompt[0].content == "Who wrote the first algorithm?" and first.positives == [["Ada Lovelace"]]
    assert first.answer == "Who wrote the first algorithm?[RQ] Ada Lovelace."
    assert ids["fanoutqa_train"] | ids["fanoutqa_dev"] == {"q-nested", "q-dc"}
    assert not ids["train"] & ids["dev"]
    for e in read["fanoutqa_train"] + read["fanoutqa_dev"]:
        assert split_of(e.id, 0.5) == ("dev" if e.id in ids["dev"] else "train")

    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["sources"]["vital_articles"] == {"read": 8, "kept": 7, "quarantined": 1, "by_kind": {"empty_text": 1}}
    assert stats["sources"]["fanoutqa"]["kept"] == 2 and stats["sources"]["ict"]["kept"] == 7
    fanout_hops = stats["files"]["fanoutqa_train.jsonl"]["hops"] + stats["files"]["fanoutqa_dev.jsonl"]["hops"]
    assert fanout_hops == 5  # 4 in-corpus leaves of q-nested + 1 of q-dc
    assert stats["sources"]["fanoutqa_leaves"]["kept"] == 5 and stats["sources"]["fanoutqa_questions"]["kept"] == 5
    assert stats["splits"]["train"]["examples"] + stats["splits"]["dev"]["examples"] == 17
    assert stats["config"] == BuildConfig(dev_fraction=0.5).model_dump()
    # The one quarantined row is the blank article, with its reason.
    (record,) = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert record["kind"] == "empty_text" and record["raw"]["id"] == "Blank"
    assert "summaries_en-us.json: read 8 = kept 7 + quarantined 1 (empty_text=1)" in report.summary()
    assert "train.jsonl: read 16 = kept 16 + quarantined 0, 19 [RQ]" in report.summary()


@pytest.mark.timeout(60)
def test_build_writes_linking_rows_split_by_source(tmp_path):
    report = _build(tmp_path, linking_dev_fraction=0.5)
    corpus, _ = load_corpus(tmp_path / "corpus.jsonl")
    entities, _ = load_corpus(tmp_path / "entities_wordnet.jsonl")
    assert len(entities) == 5 and not set(entities.ids) & set(corpus.ids)
    both = Corpus([*corpus, *entities])
    for kb in ("wikipedia", "wordnet"):
        screens = ScreenReport(source="train"), ScreenReport(source="dev")
        train = list(iter_examples(tmp_path / f"linking_{kb}_train.jsonl", both, screens[0]))
        dev = list(iter_linked_texts(tmp_path / f"linking_{kb}_dev.jsonl", both, screens[1]))
        assert screens[0].quarantined == screens[1].quarantined == 0
        assert len(train) + len(dev) == report.sources[f"linking_{kb}"].kept > 0
        dev_sources = {t.source for t in dev}
        assert all(split_of(t.source, 0.5) == "dev" for t in dev)
        for row in train:  # a training row's source is never a held-out one
            assert row.retrieval_tokens == ["[EL]"] * len(row.positives)
            assert not any(row.id.startswith(f"el-{s}-") for s in dev_sources)
        assert report.files[f"linking_{kb}_dev.jsonl"].hops == sum(len(t.mentions) for t in dev)
        # The ambiguous rows again on their own: exactly the training rows with a hard negative.
        ambiguous = list(iter_examples(tmp_path / f"linking_{kb}_ambiguous_train.jsonl", both, ScreenReport(source="a")))
        assert [r.id for r in ambiguous] == [r.id for r in train if any(r.negatives)]
        assert len(ambiguous) > 0 or kb == "wikipedia"  # every WordNet sample lemma is polysemous
        # Pairs join two of those training texts (none here: no form names two training entities;
        # tests/components/datasets/test_contrast_pairs.py pairs them), counted like the others.
        pairs = list(iter_examples(tmp_path / f"linking_{kb}_pairs_train.jsonl", both, ScreenReport(source="p")))
        assert all(len(r.positives) >= 2 and set(r.id.split("+")) <= {a.id for a in ambiguous} for r in pairs)
        assert report.files[f"linking_{kb}_pairs_train.jsonl"].screen.kept == len(pairs)
    assert "[EL]" in report.summary() and "gold mentions" in report.summary()


@pytest.mark.timeout(60)
def test_a_corpus_sample_is_random_and_fanoutqa_keeps_only_its_pages(tmp_path):
    report = _build(tmp_path / "a", corpus_sample=4, seed=1)
    corpus, _ = load_corpus(tmp_path / "a" / "corpus.jsonl")
    assert len(corpus) == 4 and set(corpus.ids) < set(kept_ids())
    assert _build(tmp_path / "b", corpus_sample=4, seed=1) and load_corpus(tmp_path / "b" / "corpus.jsonl")[0].ids == corpus.ids
    for name in ("fanoutqa_train", "fanoutqa_dev", "leaves_train"):
        for example in iter_examples(tmp_path / "a" / f"{name}.jsonl", corpus, ScreenReport(source=name)):
            assert all(ids[0] in corpus for ids in example.positives)
    assert report.sources["vital_articles"].kept == 7  # the screening still counts every article read


@pytest.mark.timeout(60)
def test_build_is_deterministic(tmp_path):
    _build(tmp_path / "a", seed=3)
    _build(tmp_path / "b", seed=3)
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_build_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError):
        _build(tmp_path, dev_fraction=1.5)
    with pytest.raises(ValueError):
        _build(tmp_path, negatives=-1)


# --- the real sources -----------------------------------------------------------------------------

@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_build_from_the_installed_packages(tmp_path):
    """The whole corpus and every FanOutQA question, without MiniLM: embedding the 10,033 articles
    for hard negatives takes 30-100 s on 2 cores, and the real miner runs in tests/e2e (on a
    sampled corpus) and in every main job."""
    report = build_datasets(tmp_path, BuildConfig(ict_limit=20, negatives=0))

    corpus, corpus_report = load_corpus(tmp_path / "corpus.jsonl")
    assert len(corpus) == report.sources["vital_articles"].kept == 10_033 and corpus_report.quarantined == 0
    hops = {}
    for name in ("train", "dev", "fanoutqa_train", "fanoutqa_dev", "leaves_train", "questions_train", "ict_train"):
        screen = ScreenReport(source=name)
        examples = list(iter_examples(tmp_path / f"{name}.jsonl", corpus, screen))
        assert screen.quarantined == 0 and screen.kept == len(examples) > 0, name
        hops[name] = sum(len(e.positives) for e in examples)
    assert hops["fanoutqa_train"] + hops["fanoutqa_dev"] == 558  # every in-corpus leaf of FanOutQA dev
    assert hops["leaves_train"] == hops["questions_train"] == hops["fanoutqa_train"]  # one per training leaf, one per gold page
    assert report.files["ict_train.jsonl"].screen.kept == 20
    assert not (tmp_path / "quarantine.jsonl").exists()
    assert not (tmp_path / "minilm_corpus.npy").exists()
    # Linking from the real sources: the articles' sentences and the installed WordNet's examples.
    assert report.sources["linking_wikipedia"].kept > 15_000 and report.sources["linking_wordnet"].kept > 2_000
    assert report.files["entities_wordnet.jsonl"].screen.kept > 4_000
