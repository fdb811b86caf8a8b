"""evaluate: how well the trained model retrieves in-stream and answers, on the FanOutQA dev split.

    dev rows ─encode (evaluate.max_length)─▶ teacher-forced [RQ] vectors ─▶ the stage's index
                                             Recall@k, MRR, each hop's rank
    each hop's FanOutQA leaf question ─MiniLM─▶ the same documents: the baseline, side by side
    first `answers` questions ─InStreamDecoder, greedy─▶ loose accuracy, token F1, EM
    GEN tokens ─next-token loss─▶ held-out LM loss (against a plain-LM fine-tune when there is one)
    all of it ─▶ the model's MLflow run: metrics, recall_at_k.png, evaluation.json

Teacher forcing gives every hop the query vector the decoder would have at that [RQ] had the
answer gone right so far (components.eval.teacher_forced): retrieval is measured apart from generation
errors. Free generation then measures the two together.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from components.config import GenerationConfig
from components.data.corpus import Corpus
from components.data.schema import Example
from components.data.screening import ScreenReport, encode_examples, iter_examples, load_corpus
from components.data.tokenize import EncodedExample
from components.datasets.fanoutqa import gold_title, in_corpus_leaves, read_dev, render
from components.eval.metrics import exact_match, f1, normalize_answer, retrieval_metrics
from components.eval.teacher_forced import TeacherForced, teacher_forced
from components.generation.decoder import InStreamDecoder
from components.model.onegen import ONEGEN_CONFIG, OneGenModel
from components.platform import storage, tracking
from components.retrieval.index import DocumentIndex, build_from_vectors
from components.retrieval.minilm import MATRIX_FILE, MATRIX_META, MODEL_NAME, document_text
from components.tokens import QUERY
from pipelines.config import PipelineConfig
from pipelines.stages.locations import load_index, load_model, local_file

RANK_DEPTH = 100  # each hop's rank is looked up this deep; a gold page further down is "> 100"
WITHIN = 0.02  # generation must not suffer: held-out loss at most 2% above the plain LM's

Encode = Callable[[list[str]], np.ndarray]  # texts → unit vectors (MiniLM, or a test's stand-in)


@dataclass
class Ranking:
    """One retriever's results for a list of hops."""

    hops: list[tuple[str, int]]  # (example id, hop index)
    gold: list[set[str]]
    ranked: list[list[str]]  # doc ids, best first, RANK_DEPTH deep

    def metrics(self, ks: Sequence[int]) -> dict[str, float]:
        """Recall@k and MRR over the top max(ks): MRR@10 by default, as components.eval.teacher_forced."""
        return retrieval_metrics([r[: max(ks)] for r in self.ranked], self.gold, ks)

    def ranks(self) -> list[int | None]:
        """1-based rank of each hop's first gold page; None when deeper than RANK_DEPTH."""
        return [next((i + 1 for i, d in enumerate(r) if d in g), None) for r, g in zip(self.ranked, self.gold)]

    def recall_curve(self, depth: int) -> list[float]:
        return [sum(bool(set(r[:k]) & g) for r, g in zip(self.ranked, self.gold)) / max(len(self.gold), 1)
                for k in range(1, depth + 1)]


@dataclass
class EvaluateReport:
    metrics: dict[str, float]
    ks: list[int]
    run_id: str = ""
    plain_lm: str = ""  # where the plain-LM model was, or why there is no comparison
    minilm_documents: str = ""  # where MiniLM's document vectors came from
    failed_rows: list[dict] = field(default_factory=list)  # dev rows that could not be encoded, with why
    hops: list[dict] = field(default_factory=list)  # per hop: ids, gold, both ranks
    answers: list[dict] = field(default_factory=list)  # per answered question

    def summary(self) -> str:
        m = self.metrics
        lines = [f"evaluate: {m['dev_rows']:.0f} dev rows encoded, {m['dev_rows_failed']:.0f} failed; "
                 f"{m['in_stream_queries']:.0f} hops in-stream, {m['minilm_queries']:.0f} for MiniLM; "
                 f"index of {m['evaluate_index_documents']:.0f} documents",
                 "  k   | in-stream | MiniLM"]
        nan = float("nan")  # MiniLM had no hop to answer
        for k in self.ks:
            lines.append(f"  {k:<3} | {m[f'in_stream_recall_at_{k}']:9.3f} | {m.get(f'minilm_recall_at_{k}', nan):6.3f}")
        lines.append(f"  MRR | {m['in_stream_mrr']:9.3f} | {m.get('minilm_mrr', nan):6.3f}")
        if "answer_questions" in m:
            lines.append(f"answers ({m['answer_questions']:.0f} questions): loose accuracy {m['answer_loose_acc']:.3f}, "
                         f"token F1 {m['answer_f1']:.3f}, EM {m['answer_em']:.3f}")
        plain = (f"{m['plain_lm_heldout_lm_loss']:.4f}, {m['lm_loss_vs_plain_lm']:+.2%}, within 2%: "
                 f"{bool(m['lm_loss_within_2pct'])}" if "lm_loss_vs_plain_lm" in m else self.plain_lm)
        lines.append(f"held-out LM loss {m['heldout_lm_loss']:.4f} on {m['heldout_lm_tokens']:.0f} tokens; plain LM: {plain}")
        for row in self.failed_rows:
            lines.append(f"  failed dev row {row['row']}: {row['kind']}: {row['reason']}")
        lines.append(f"MLflow run {self.run_id}")
        return "\n".join(lines)


# -- retrieval --------------------------------------------------------------------------------


def search(index: DocumentIndex, queries: np.ndarray) -> list[list[str]]:
    if len(queries) == 0:
        return []
    _, positions = index.search_arrays(np.ascontiguousarray(queries, dtype=np.float32), RANK_DEPTH)
    return [[index.corpus.at(int(p)).id for p in row if p >= 0] for row in positions]


def in_stream(forced: TeacherForced, rows: Sequence[EncodedExample], index: DocumentIndex) -> Ranking:
    """Teacher-forced [RQ] vectors of every hop, searched in the stage's index."""
    hops = [(row.id, h) for row in rows for h in range(len(row.positives))]
    return Ranking(hops, forced.gold, search(index, forced.queries.numpy()))


def fanoutqa_leaves(examples: Sequence[Example], questions: Sequence[dict], corpus: Corpus) -> dict[str, list[dict]]:
    """Example id → its hops' FanOutQA leaves, for the examples whose hops are exactly the
    question's in-corpus leaves, depth first, gold page for gold page (how the rows were built)."""
    by_id = {q["id"]: q for q in questions}
    matched = {}
    for example in examples:
        if example.id in by_id:
            leaves = in_corpus_leaves(by_id[example.id], corpus)
            same_pages = all(gold_title(leaf) in ids for leaf, ids in zip(leaves, example.positives))
            if len(leaves) == len(example.positives) and same_pages:
                matched[example.id] = leaves
    return matched


def cached_minilm_rows(data_dir: str, ids: Sequence[str], endpoint: str | None) -> np.ndarray | None:
    """Rows of the corpus matrix `onegen data build` cached beside the data, for `ids`; None if
    there is none or it lacks one of them. (Its fingerprint needs the articles' descriptions,
    which a Corpus does not carry: the model name and ids are what can be checked here.)"""
    try:
        meta = json.loads(storage.read_bytes(f"{data_dir}/{MATRIX_META}", endpoint))
        matrix = np.load(io.BytesIO(storage.read_bytes(f"{data_dir}/{MATRIX_FILE}", endpoint)))
    except (FileNotFoundError, ValueError):
        return None
    row = {doc_id: i for i, doc_id in enumerate(meta.get("ids", []))}
    if meta.get("model") != MODEL_NAME or matrix.shape[0] != len(row) or not all(d in row for d in ids):
        return None
    return np.ascontiguousarray(matrix[[row[d] for d in ids]], dtype=np.float32)


def minilm(index: DocumentIndex, hops: Ranking, leaves: dict[str, list[dict]], encode: Encode | None,
           cached: np.ndarray | None) -> tuple[Ranking, str]:
    """MiniLM over the index's documents, queried with each hop's leaf question (the hops whose
    question is known); and where its document vectors came from."""
    keep = [i for i, (example_id, _) in enumerate(hops.hops) if example_id in leaves]
    if not keep:
        return Ranking([], [], []), "not run: no dev hop matched a FanOutQA leaf question"
    encode = encode or _minilm_encoder()
    if cached is not None:
        doc_vectors, source = cached, f"{MODEL_NAME} corpus matrix cached by `onegen data build` (title: description)"
    else:
        doc_vectors, source = encode([document_text(d) for d in index.corpus]), "encoded here (title: start of text)"
    docs = build_from_vectors(doc_vectors, index.corpus, MODEL_NAME)
    queries = encode([leaves[hops.hops[i][0]][hops.hops[i][1]]["question"] for i in keep])
    return Ranking([hops.hops[i] for i in keep], [hops.gold[i] for i in keep], search(docs, queries)), source


# -- answers ------------------------------------------------------------------------------------


def loose_accuracy(text: str, sub_answers: Sequence[str]) -> float | None:
    """FanOutQA's loose accuracy of one answer: the fraction of the gold sub-answers that appear
    in the generated text, both normalised. Here a sub-answer is a hop's whole rendered answer (a
    list answer is one string), which is stricter than FanOutQA's own flattening into items."""
    golds = [g for g in (normalize_answer(a) for a in sub_answers) if g]
    if not golds:
        return None
    said = normalize_answer(text)
    return sum(g in said for g in golds) / len(golds)


def answer_quality(model: OneGenModel, index: DocumentIndex, examples: Sequence[Example],
                   leaves: dict[str, list[dict]], max_new_tokens: int, max_retrievals: int) -> tuple[dict, list[dict]]:
    """Free generation (greedy, in-stream retrieval) from the user message alone.

    EM is strict here by construction: the reference is the whole walk (every sub-question, every
    sub-answer, then the final answer) with [RQ] removed, so an exact match needs the model to
    reproduce a long multi-sentence text word for word; it stays near 0 even for good answers.
    Token F1 credits the overlap, and loose accuracy asks only whether the facts were stated."""
    if not examples:
        return {}, []
    decoder = InStreamDecoder(model, index)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, max_retrievals=max_retrievals)
    generations = decoder.generate([model.formatter.prompt(e.prompt) for e in examples], cfg)
    per_question = []
    for example, gen in zip(examples, generations):
        reference = example.answer.replace(QUERY, "")
        sub_answers = [render(leaf["answer"]) for leaf in leaves.get(example.id, [])]
        per_question.append({
            "id": example.id, "generated": gen.text, "reference": reference,
            "retrieved": [h.doc_ids for h in gen.hops], "gold": [list(p) for p in example.positives],
            "loose_acc": loose_accuracy(gen.text, sub_answers), "f1": f1(gen.text, reference),
            "em": exact_match(gen.text, reference),
        })
    loose = [q["loose_acc"] for q in per_question if q["loose_acc"] is not None]
    metrics = {
        "answer_questions": float(len(per_question)),
        "answer_loose_acc": float(np.mean(loose)) if loose else float("nan"),
        "answer_loose_acc_questions": float(len(loose)),
        "answer_f1": float(np.mean([q["f1"] for q in per_question])),
        "answer_em": float(np.mean([q["em"] for q in per_question])),
    }
    return metrics, per_question


# -- held-out LM loss ---------------------------------------------------------------------------


def plain_lm_comparison(cfg: PipelineConfig, loss: float, rows: Sequence[EncodedExample], dev_path: Path,
                        corpus: Corpus, scratch: Path) -> tuple[dict, str]:
    """The plain LM's loss on the same rows and the relative difference; or why there is none."""
    location = cfg.plain_lm().paths.model
    if not cfg.evaluate.plain_lm_baseline:
        return {}, "not requested (evaluate.plain_lm_baseline is false)"
    if not storage.exists(f"{location}/{ONEGEN_CONFIG}", cfg.storage.s3_endpoint_url):
        return {}, f"not available: no model at {location} (train it: onegen train --config <this config> --plain-lm)"
    plain = load_model(location, cfg.storage.s3_endpoint_url, scratch / "plain-lm")
    plain_rows, _ = encode_examples(dev_path, corpus, plain.formatter, cfg.evaluate.max_length)
    if [r.input_ids for r in plain_rows] != [r.input_ids for r in rows]:
        return {}, f"not comparable: {location} tokenises the dev rows differently"
    plain_loss = teacher_forced(plain, plain_rows).lm_loss
    relative = (loss - plain_loss) / plain_loss
    return {"plain_lm_heldout_lm_loss": plain_loss, "lm_loss_vs_plain_lm": relative,
            "lm_loss_within_2pct": float(relative <= WITHIN)}, location


# -- the stage ----------------------------------------------------------------------------------


def evaluate(cfg: PipelineConfig, *, questions: Sequence[dict] | None = None,
             encode: Encode | None = None) -> EvaluateReport:
    """Run the stage. `questions` (FanOutQA-shaped dicts; default: the installed dev file) give each
    hop's leaf question to MiniLM; `encode` stands in for MiniLM (default: the real one)."""
    started = time.perf_counter()
    endpoint, data_dir = cfg.storage.s3_endpoint_url, cfg.data.dir.rstrip("/")
    run_id = tracking.run_for(MlflowClient(cfg.mlflow.tracking_uri), cfg.mlflow.experiment, cfg.run_name, "evaluate")  # first: a wrong tracking URI fails now, not after the work
    with tempfile.TemporaryDirectory(prefix="onegen-evaluate-") as tmp:
        scratch = Path(tmp)
        model = load_model(cfg.paths.model, endpoint, scratch / "model")
        index = load_index(cfg.paths.index, endpoint, scratch / "index", model.fingerprint())
        corpus, _ = load_corpus(local_file(f"{data_dir}/{cfg.data.corpus}", endpoint, scratch))
        dev_path = local_file(f"{data_dir}/{cfg.data.dev}", endpoint, scratch)
        rows, failed = encode_dev(dev_path, corpus, model, cfg.evaluate.max_length, scratch)
        examples = list(iter_examples(dev_path, corpus, ScreenReport(source=str(dev_path))))
        leaves = fanoutqa_leaves(examples, read_dev() if questions is None else questions, corpus)

        forced = teacher_forced(model, rows)  # one pass: query vectors and the LM loss
        ours = in_stream(forced, rows, index)
        cached = cached_minilm_rows(data_dir, index.corpus.ids, endpoint)
        theirs, minilm_source = minilm(index, ours, leaves, encode, cached)
        max_hops = max((len(e.positives) for e in examples), default=1)
        answer_metrics, answers = answer_quality(model, index, examples[: cfg.evaluate.answers], leaves,
                                                 cfg.evaluate.max_new_tokens, max_hops)
        loss, tokens = forced.lm_loss, forced.lm_tokens
        plain_metrics, plain_lm = plain_lm_comparison(cfg, loss, rows, dev_path, corpus, scratch)

        indexed = set(index.corpus.ids)  # a gold page outside the index can never be found: count those hops
        metrics = {
            **_prefixed("in_stream", ours.metrics(cfg.evaluate.ks)),
            **(_prefixed("minilm", theirs.metrics(cfg.evaluate.ks)) if theirs.gold else {"minilm_queries": 0.0}),
            **answer_metrics,
            "heldout_lm_loss": loss, "heldout_lm_tokens": float(tokens), **plain_metrics,
            "dev_rows": float(len(rows)), "dev_rows_failed": float(len(failed)),
            "dev_rows_truncated": float(sum(r.truncated_tokens > 0 for r in rows)),
            "in_stream_gold_not_indexed": float(sum(not (g & indexed) for g in ours.gold)),
            "evaluate_index_documents": float(index.ntotal),
            "evaluate_seconds": time.perf_counter() - started,
        }
        report = EvaluateReport(metrics, list(cfg.evaluate.ks), run_id, plain_lm, minilm_source, failed,
                                _per_hop(ours, theirs), answers)
        _log(cfg, report, ours, theirs, scratch)
    return report


def encode_dev(dev_path: Path, corpus: Corpus, model: OneGenModel, max_length: int,
               scratch: Path) -> tuple[list[EncodedExample], list[dict]]:
    """The dev rows that encode, and every one that does not with its reason (never dropped silently)."""
    quarantine = scratch / "dev_quarantine.jsonl"
    rows, _ = encode_examples(dev_path, corpus, model.formatter, max_length, quarantine)
    failed = [json.loads(line) for line in quarantine.read_text().splitlines()] if quarantine.exists() else []
    return rows, [{k: r[k] for k in ("row", "field", "kind", "reason")} for r in failed]


def _minilm_encoder() -> Encode:
    from components.retrieval.minilm import MiniLMRetriever

    return MiniLMRetriever().encode


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """recall@1 → <prefix>_recall_at_1, mrr → <prefix>_mrr, queries → <prefix>_queries."""
    return {f"{prefix}_{k.replace('@', '_at_')}": float(v) for k, v in metrics.items()}


def _per_hop(ours: Ranking, theirs: Ranking) -> list[dict]:
    minilm_rank = dict(zip(theirs.hops, theirs.ranks()))
    return [{"example": example_id, "hop": hop, "gold": sorted(gold), "in_stream_rank": rank,
             "in_stream_top": ranked[0] if ranked else None, "minilm_rank": minilm_rank.get((example_id, hop))}
            for (example_id, hop), gold, rank, ranked in zip(ours.hops, ours.gold, ours.ranks(), ours.ranked)]


# -- MLflow -------------------------------------------------------------------------------------


def plot_recall(ours: Ranking, theirs: Ranking, ks: Sequence[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    depth = max(ks)
    fig, ax = plt.subplots(figsize=(6, 4))
    for ranking, label in ((ours, f"in-stream [RQ] ({len(ours.gold)} hops)"), (theirs, f"MiniLM ({len(theirs.gold)} hops)")):
        ax.plot(range(1, depth + 1), ranking.recall_curve(depth), marker="o", markersize=3, label=label)
    ax.set(xlabel="k", ylabel="Recall@k", ylim=(0, 1.02), title="Gold page among the top k, FanOutQA dev hops")
    ax.set_xticks(list(ks))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log(cfg: PipelineConfig, report: EvaluateReport, ours: Ranking, theirs: Ranking, scratch: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri)
    now = int(time.time() * 1000)
    finite = {k: v for k, v in report.metrics.items() if np.isfinite(v)}  # MLflow refuses NaN
    client.log_batch(report.run_id, metrics=[Metric(k, v, now, 0) for k, v in finite.items()])
    client.set_tag(report.run_id, "onegen.evaluate.plain_lm", report.plain_lm[:5000])
    client.set_tag(report.run_id, "onegen.evaluate.minilm_documents", report.minilm_documents)
    out = scratch / "artifacts"
    out.mkdir()
    plot_recall(ours, theirs, report.ks, out / "recall_at_k.png")
    record = {"metrics": {k: (v if np.isfinite(v) else None) for k, v in report.metrics.items()}, "ks": report.ks,
              "plain_lm": report.plain_lm, "minilm_documents": report.minilm_documents, "rank_depth": RANK_DEPTH,
              "failed_rows": report.failed_rows, "hops": report.hops, "answers": report.answers}
    (out / "evaluation.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    client.log_artifacts(report.run_id, str(out))
