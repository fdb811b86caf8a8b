"""All sources → the files training and evaluation read, in `out_dir`:

    corpus.jsonl                          the vital articles, one Document per line
    train.jsonl, dev.jsonl                every example of each split
    fanoutqa_train.jsonl, fanoutqa_dev.jsonl, leaves_train.jsonl, questions_train.jsonl,
    ict_train.jsonl                       the same rows, per source
    minilm_corpus.npy / .json             MiniLM's corpus matrix, reused by later stages
    entities_wordnet.jsonl                the WordNet knowledge base (synsets as documents); the
                                          vital articles are the other one, corpus.jsonl itself
    linking_wikipedia_train.jsonl, linking_wordnet_train.jsonl
                                          entity-linking rows ([EL]) of the training split
    linking_{wikipedia,wordnet}_ambiguous_train.jsonl
                                          ... those of texts with an ambiguous mention (for
                                          WordNet nearly all of them), to weigh up in a mix
    linking_{wikipedia,wordnet}_pairs_train.jsonl
                                          two training texts joined, in which one form names two
                                          entities (components/datasets/contrast_pairs.py)
    linking_wikipedia_dev.jsonl, linking_wordnet_dev.jsonl
                                          held-out linking texts with their gold mentions
    quarantine.jsonl                      rows that failed, with the reason (only if any did)
    stats.json                            counts per source, per file and per split

train.jsonl and dev.jsonl are the RAG rows; linking is in its own files, for presets to mix in.
Source rows are screened before they are written (so the files hold only good rows), then every
written file is read back through `components.data.screening`: the counts reported are of rows that
pass the schema and the corpus checks on disk, not of rows the builders meant to write.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from components.data.corpus import Corpus
from components.data.linking import linking_example
from components.data.schema import Example
from components.data.screening import (
    ScreenReport,
    example_check,
    iter_examples,
    iter_linked_texts,
    linked_text_check,
    load_corpus,
    screen,
)
from components.datasets.config import BuildConfig
from components.datasets.contrast_pairs import contrast_pairs
from components.datasets.fanoutqa import (
    NegativeMiner,
    fanoutqa_examples,
    leaf_examples,
    question_examples,
    read_dev,
    source_question_id,
)
from components.datasets.inverse_cloze import ict_examples
from components.datasets.named_entities import NamedEntityReport, named_entity_texts
from components.datasets.vital_articles import VitalArticles, read_summaries, vital_articles
from components.datasets.wordnet import WordNet, read_wordnet, wordnet_texts

QUARANTINE = "quarantine.jsonl"
SPLITS = ("train", "dev")


@dataclass
class FileCount:
    screen: ScreenReport
    hops: int | None = None  # [RQ] (or [EL], or gold mentions: `unit`) in the rows kept; None for documents
    unit: str = "[RQ]"


@dataclass
class BuildReport:
    out_dir: Path
    config: BuildConfig
    sources: dict[str, ScreenReport] = field(default_factory=dict)  # source rows before writing
    files: dict[str, FileCount] = field(default_factory=dict)  # what is on disk, read back
    seconds: float = 0.0

    def stats(self) -> dict:
        def counts(r: ScreenReport) -> dict:
            return {"read": r.read, "kept": r.kept, "quarantined": r.quarantined, "by_kind": dict(r.by_kind)}

        return {
            "config": self.config.model_dump(),
            "sources": {name: counts(r) for name, r in self.sources.items()},
            "files": {name: {**counts(f.screen), "hops": f.hops} for name, f in self.files.items()},
            "splits": {s: {"examples": self.files[f"{s}.jsonl"].screen.kept, "hops": self.files[f"{s}.jsonl"].hops} for s in SPLITS},
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        lines = ["sources (screened before writing):"]
        lines += [f"  {r.summary()}" for r in self.sources.values()]
        lines.append(f"files in {self.out_dir} (read back):")
        for name, f in self.files.items():
            hops = f", {f.hops} {f.unit}" if f.hops is not None else ""
            lines.append(f"  {name}: read {f.screen.read} = kept {f.screen.kept} + quarantined {f.screen.quarantined}{hops}")
        lines.append(f"took {self.seconds:.1f} s")
        return "\n".join(lines)


def split_of(question_id: str, dev_fraction: float) -> str:
    """"dev" or "train" from a stable hash of the id: a question keeps its split as data is added."""
    h = int.from_bytes(hashlib.blake2b(question_id.encode("utf-8"), digest_size=8).digest(), "big")
    return "dev" if h < dev_fraction * 2**64 else "train"


def no_negatives(queries: list[str], gold: list[str]) -> list[list[str]]:
    return [[] for _ in queries]


def minilm_miner(articles: VitalArticles, k: int, cache_dir: Path) -> NegativeMiner:
    from components.datasets.negatives import MiniLMNegatives, embed_articles  # loads torch and MiniLM
    from components.retrieval.minilm import MiniLMRetriever

    retriever = MiniLMRetriever()
    matrix = embed_articles(retriever, articles, cache_dir)
    return MiniLMNegatives(retriever, [d.id for d in articles.documents], matrix, k)


def _write_jsonl(path: Path, rows: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row + "\n")


def _read_back(path: Path, corpus: Corpus, quarantine: Path, unit: str = "[RQ]") -> FileCount:
    report = ScreenReport(source=path.name)
    hops = sum(len(e.positives) for e in iter_examples(path, corpus, report, quarantine))
    return FileCount(report, hops, unit)


def build_datasets(
    out_dir: str | Path,
    config: BuildConfig = BuildConfig(),
    *,
    summaries: dict[str, dict] | None = None,  # the vital articles; default: the installed package
    questions: list[dict] | None = None,  # FanOutQA questions; default: the installed dev file
    miner: NegativeMiner | None = None,  # default: MiniLM top-`negatives` (tests inject their own)
    wordnet: WordNet | None = None,  # default: read from config.wordnet_dir
) -> BuildReport:
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quarantine = out / QUARANTINE
    quarantine.unlink(missing_ok=True)  # screening appends; a rebuild starts from an empty quarantine
    report = BuildReport(out, config)

    articles = vital_articles(summaries if summaries is not None else read_summaries(), quarantine)
    if config.corpus_sample is not None:
        articles = articles.sample(config.corpus_sample, config.seed)
    report.sources["vital_articles"] = articles.report
    _write_jsonl(out / "corpus.jsonl", (d.model_dump_json() for d in articles.documents))
    corpus, corpus_report = load_corpus(out / "corpus.jsonl", quarantine)
    report.files["corpus.jsonl"] = FileCount(corpus_report)

    if miner is None:
        miner = minilm_miner(articles, config.negatives, out) if config.negatives else no_negatives
    questions = questions if questions is not None else read_dev()
    walks = fanoutqa_examples(questions, corpus, miner)
    rows = {
        "fanoutqa": walks,
        "fanoutqa_leaves": leaf_examples(questions, corpus, miner),
        "fanoutqa_questions": question_examples(walks, questions, miner),
        "ict": ict_examples(articles, config.ict_limit, config.seed, config.ict_redact_rate),
    }
    described = {
        "fanoutqa": f"fanoutqa dev, the {len(rows['fanoutqa'])} of {len(questions)} questions with a leaf in the corpus",
        "fanoutqa_leaves": f"fanoutqa dev sub-questions asked alone, the {len(rows['fanoutqa_leaves'])} whose page is in the corpus",
        "fanoutqa_questions": f"fanoutqa dev questions as one query, {len(rows['fanoutqa_questions'])} rows (one per gold page)",
        "ict": f"inverse cloze, a sentence of {len(rows['ict'])} of {len(articles.documents)} articles",
    }
    check = example_check(corpus)  # one check for all sources: ids are unique across them
    kept: dict[str, list[Example]] = {}
    for source, source_rows in rows.items():
        report.sources[source] = ScreenReport(source=described[source])
        kept[source] = list(screen(enumerate(source_rows, start=1), check, quarantine, report.sources[source]))

    parts = {
        "fanoutqa_train": [e for e in kept["fanoutqa"] if split_of(e.id, config.dev_fraction) == "train"],
        "fanoutqa_dev": [e for e in kept["fanoutqa"] if split_of(e.id, config.dev_fraction) == "dev"],
        # A leaf or whole-question row is in the split of its question: nothing of a dev question is trained on.
        "leaves_train": [e for e in kept["fanoutqa_leaves"] if split_of(source_question_id(e.id), config.dev_fraction) == "train"],
        "questions_train": [e for e in kept["fanoutqa_questions"] if split_of(source_question_id(e.id), config.dev_fraction) == "train"],
        "ict_train": kept["ict"],
    }
    parts["train"] = parts["fanoutqa_train"] + parts["leaves_train"] + parts["questions_train"] + parts["ict_train"]
    parts["dev"] = parts["fanoutqa_dev"]
    for name, examples in parts.items():
        path = out / f"{name}.jsonl"
        _write_jsonl(path, (e.model_dump_json() for e in examples))
        report.files[path.name] = _read_back(path, corpus, quarantine)

    if config.linking:
        _build_linking(out, config, articles, corpus, wordnet or read_wordnet(config.wordnet_dir), report)

    report.seconds = time.perf_counter() - start
    (out / "stats.json").write_text(json.dumps(report.stats(), indent=2) + "\n")
    return report


def _build_linking(out: Path, config: BuildConfig, articles: VitalArticles, corpus: Corpus, wordnet: WordNet,
                   report: BuildReport) -> None:
    """The linking files: texts split by their source, training rows in the Example schema."""
    quarantine = out / QUARANTINE
    wordnet_linked, kb = wordnet_texts(wordnet, config.wordnet_lemmas, config.seed)
    _write_jsonl(out / "entities_wordnet.jsonl", (d.model_dump_json() for d in kb))
    entities, entities_report = load_corpus(out / "entities_wordnet.jsonl", quarantine)
    report.files["entities_wordnet.jsonl"] = FileCount(entities_report)

    named = NamedEntityReport()
    texts = {"wikipedia": named_entity_texts(articles, named), "wordnet": wordnet_linked}
    described = {
        "wikipedia": f"entity linking, {named.texts} of {named.sentences} vital-article sentences ({named.uncertain} left out: "
                     f"an ambiguous name outside its articles), {named.mentions['ambiguous']} ambiguous and "
                     f"{named.mentions['unambiguous']} unambiguous mentions",
        "wordnet": f"word senses, {len(wordnet_linked)} WordNet example sentences of {config.wordnet_lemmas or 'all'} lemmas, "
                   f"{len(kb)} synsets",
    }
    # One knowledge base for the checks: the articles and the synsets never share an id.
    both = Corpus([*corpus, *entities])
    for kb_name, linked in texts.items():
        checked = ScreenReport(source=described[kb_name])
        kept = list(screen(((n, t.model_dump()) for n, t in enumerate(linked, start=1)), linked_text_check(both), quarantine, checked))
        report.sources[f"linking_{kb_name}"] = checked
        dev = [t for t in kept if split_of(t.source, config.linking_dev_fraction) == "dev"]
        train = [t for t in kept if split_of(t.source, config.linking_dev_fraction) == "train"]
        # The texts with an ambiguous mention again on their own, for a preset to weigh up: a few
        # hundred of the vital articles' ~13,500 training texts are where linking is hard.
        for name, texts_of in ((f"linking_{kb_name}_train.jsonl", train),
                               (f"linking_{kb_name}_ambiguous_train.jsonl", [t for t in train if any(m.ambiguous for m in t.mentions)]),
                               (f"linking_{kb_name}_pairs_train.jsonl", contrast_pairs(train, config.seed))):
            rows = [linking_example(t, config.linking_negatives) for t in texts_of]
            rows_report = report.sources[f"{name.removesuffix('.jsonl')}_rows"] = ScreenReport(source=f"{kb_name} linking rows of {name}")
            train_rows = list(screen(enumerate(rows, start=1), example_check(both), quarantine, rows_report))
            _write_jsonl(out / name, (e.model_dump_json() for e in train_rows))
            report.files[name] = _read_back(out / name, both, quarantine, "[EL]")
        _write_jsonl(out / f"linking_{kb_name}_dev.jsonl", (t.model_dump_json() for t in dev))
        report.files[f"linking_{kb_name}_dev.jsonl"] = _read_back_linked(out / f"linking_{kb_name}_dev.jsonl", both, quarantine)


def _read_back_linked(path: Path, entity_ids, quarantine: Path) -> FileCount:
    report = ScreenReport(source=path.name)
    mentions = sum(len(t.mentions) for t in iter_linked_texts(path, entity_ids, report, quarantine))
    return FileCount(report, mentions, "gold mentions")
