"""evaluate: what the trained model gives a user, on the FanOutQA dev split that training never
sees, over the whole index the stage built (the corpus that is registered and served):

    teacher-forced   each dev hop's [RQ] vector after the gold walk so far ─▶ the index: Recall@k, MRR;
                     MiniLM on the same hops' sub-questions over the same corpus, side by side
    free-running     every dev question answered by the model itself (the in-stream decoder, greedy,
                     the generation settings of `evaluate.generation`), with plain argmax retrieval
                     and, when the model has a calibrated τ, the threshold policy: evidence recall
                     (the question's gold pages among everything retrieved), questions answered
                     without retrieving, hops per answer; beside the pipeline a user would build
                     instead: MiniLM given the question, its top N with N = the answer's retrieval
                     budget (max_retrievals × top_k), and N = what the model actually retrieved;
                     served_evidence_recall is the server's default policy's (promote decides on it)
    answers          FanOutQA's loose and strict accuracy of the final answer, token F1 and EM
    LM loss          next-token loss on the dev walks, beside the plain-LM fine-tune's when there is one
    entity linking   (for each base in `data.linking_dev`) the held-out vital-article texts, WordNet's
                     example sentences: linking accuracy on every gold mention, ambiguous and
                     unambiguous apart, ours ([EL] states) beside the most frequent entity (WordNet:
                     the first-listed sense) and MiniLM; then a seeded random sample linked end to end
                     by the model free-running (link mode, its calibrated τ for [EL]) beside a string
                     matcher with each baseline: detection and end-to-end P/R/F1
    all of it ─▶ the model's MLflow run: metrics, recall_at_k.png, evaluation.json
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from components.data.aliases import Matcher
from components.data.corpus import Corpus
from components.data.schema import Example
from components.data.screening import ScreenReport, encode_examples, iter_examples, iter_linked_texts, load_corpus
from components.data.tokenize import EncodedExample
from components.datasets.fanoutqa import question_leaves, read_dev, render
from components.eval import free_running
from components.eval.linking import LinkingEvaluation, MiniLMLinker, MostFrequentEntity, evaluate_linking
from components.eval.metrics import exact_match, f1, loose_accuracy, strict_accuracy
from components.eval.ranking import Ranking, search_index, search_matrix
from components.eval.teacher_forced import teacher_forced
from components.generation.decoder import Generation, InStreamDecoder
from components.model.onegen import ONEGEN_CONFIG, OneGenModel
from components.platform import storage, tracking
from components.retrieval.index import KNOWLEDGE_BASES_DIR, DocumentIndex
from components.retrieval.minilm import MATRIX_FILE, MATRIX_META, MODEL_NAME, document_text
from pipelines.config import PipelineConfig
from pipelines.stages.locations import data_file, load_index, load_model, local_file

LINK_MAX_TOKENS = 256  # a linked copy's cap; each text gets its own copy budget below it
WITHIN = 0.02  # generation must not suffer: held-out loss at most 2% above the plain LM's
FINAL = "So the answer is:"  # how a walk states its final answer (components/datasets/fanoutqa.py)

Encode = Callable[[list[str]], np.ndarray]  # texts → unit vectors (MiniLM, or a test's stand-in)


@dataclass
class EvaluateReport:
    metrics: dict[str, float]
    ks: list[int]
    run_id: str = ""
    plain_lm: str = ""  # where the plain-LM model was, or why there is no comparison
    minilm_documents: str = ""  # where MiniLM's document vectors came from
    failed_rows: list[dict] = field(default_factory=list)  # dev rows that could not be encoded, with why
    hops: list[dict] = field(default_factory=list)  # per teacher-forced hop: ids, gold, both ranks
    answers: list[dict] = field(default_factory=list)  # per dev question and policy: text, retrievals, scores

    def summary(self) -> str:
        return summary_table(self.metrics, self.ks) + "".join(
            f"\n  failed dev row {row['row']}: {row['kind']}: {row['reason']}" for row in self.failed_rows
        ) + f"\n  plain LM: {self.plain_lm}\nMLflow run {self.run_id}"


def summary_table(m: dict[str, float], ks: Sequence[int]) -> str:
    """The evaluation as a user reads it: ours beside MiniLM, teacher-forced and free-running."""
    nan = float("nan")
    lines = [f"evaluation on {m.get('dev_questions', 0):.0f} FanOutQA dev questions ({m.get('teacher_forced_queries', 0):.0f} hops), "
             f"index of {m.get('index_documents', 0):.0f} documents (the whole corpus: {m.get('corpus_documents', 0):.0f})",
             f"  teacher-forced   {'':13}" + " ".join(f"{'R@' + str(k):>7}" for k in ks) + f" {'MRR':>7}"]
    for prefix, label in (("teacher_forced", "OneGen [RQ]"), ("minilm", "MiniLM")):
        row = [m.get(f"{prefix}_recall_at_{k}", nan) for k in ks] + [m.get(f"{prefix}_mrr", nan)]
        lines.append(f"    {label:<28}" + " ".join(f"{v:7.3f}" for v in row))
    lines.append(f"  free-running     {'':13} {'evidence':>9} {'docs/q':>7} {'no-RQ':>7} {'hops':>6}")
    rows = [("free", "OneGen, argmax"), ("free_tau", f"OneGen, τ={m.get('retrieval_threshold', nan):.3f}"),
            ("minilm_budget", "MiniLM top-N (budget)"), ("minilm_matched", "MiniLM top-N (= argmax's)"),
            ("minilm_matched_tau", "MiniLM top-N (= τ's)")]
    for prefix, label in rows:
        if f"{prefix}_evidence_recall" in m:
            lines.append(f"    {label:<28} {m[f'{prefix}_evidence_recall']:9.3f} {m[f'{prefix}_documents_per_question']:7.2f} "
                         f"{m.get(f'{prefix}_no_retrieval_rate', nan):7.3f} {m.get(f'{prefix}_hops_per_answer', nan):6.2f}")
    for prefix, label in (("answer", "argmax"), ("answer_tau", "τ")):
        if f"{prefix}_f1" in m:
            lines.append(f"  answers ({label}): loose accuracy {m[f'{prefix}_loose_acc']:.3f}, strict {m[f'{prefix}_strict_acc']:.3f}, "
                         f"F1 {m[f'{prefix}_f1']:.3f}, EM {m[f'{prefix}_em']:.3f}")
    plain = (f"; plain LM {m['plain_lm_heldout_lm_loss']:.4f} ({m['lm_loss_vs_plain_lm']:+.2%})" if "lm_loss_vs_plain_lm" in m else "")
    lines.append(f"  held-out LM loss {m.get('heldout_lm_loss', nan):.4f}{plain}")
    for kb, title in (("wikipedia", "held-out vital-article texts"), ("wordnet", "held-out WordNet example sentences")):
        if f"{linking_prefix(kb)}_ours_accuracy" in m:
            lines += linking_table(m, linking_prefix(kb), title)
    return "\n".join(lines)


def linking_table(m: dict[str, float], el: str = "el", title: str = "held-out vital-article texts") -> list[str]:
    frequent = "first-listed sense" if el == "el_wordnet" else "most frequent entity"
    lines = [f"entity linking, {title}: gold mentions {m[f'{el}_ours_mentions_ambiguous']:.0f} ambiguous, "
             f"{m[f'{el}_ours_mentions_unambiguous']:.0f} unambiguous",
             f"  linking accuracy {'':12} {'ambiguous':>10} {'unambiguous':>12}"]
    for prefix, label in (("ours", "OneGen [EL], candidates"), ("ours_whole_knowledge_base", "OneGen [EL], whole base"),
                          ("most_frequent", frequent), ("minilm", "MiniLM, candidates")):
        lines.append(f"    {label:<26} {m[f'{el}_{prefix}_accuracy_ambiguous']:10.3f} {m[f'{el}_{prefix}_accuracy_unambiguous']:12.3f}")
    lines.append(f"  end to end, {m[f'{el}_texts_linked']:.0f} texts (sample) {'P':>5} {'R':>6} {'F1':>6} {'span F1':>8}")
    for prefix, label, spans in (("ours", f"OneGen, τ={m.get('link_threshold', float('nan')):.3f}", "ours"),
                                 ("string_match_most_frequent", f"string match + {frequent}", "string_match"),
                                 ("string_match_minilm", "string match + MiniLM", "string_match")):
        e2e = [m[f"{el}_{prefix}_end_to_end_{k}"] for k in ("precision", "recall", "f1")]
        lines.append(f"    {label:<30}" + " ".join(f"{v:6.3f}" for v in e2e) + f" {m[f'{el}_{spans}_detection_f1']:8.3f}")
    return lines


# -- MiniLM: the retriever a user would pick instead -------------------------------------------


def minilm_corpus(data_dir: str, corpus: Corpus, encode: Encode, endpoint: str | None) -> tuple[np.ndarray, str]:
    """MiniLM vectors of every document: the matrix `onegen data build` cached beside the data
    ("title: description"), when it covers these ids, else encoded here ("title: start of text")."""
    try:
        meta = json.loads(storage.read_bytes(f"{data_dir}/{MATRIX_META}", endpoint))
        matrix = np.load(io.BytesIO(storage.read_bytes(f"{data_dir}/{MATRIX_FILE}", endpoint)))
        row = {doc_id: i for i, doc_id in enumerate(meta.get("ids", []))}
        if meta.get("model") == MODEL_NAME and matrix.shape[0] == len(row) and all(d in row for d in corpus.ids):
            rows = np.ascontiguousarray(matrix[[row[d] for d in corpus.ids]], dtype=np.float32)
            return rows, f"{MODEL_NAME} corpus matrix cached by `onegen data build` (title: description)"
    except (FileNotFoundError, ValueError, KeyError):
        pass
    return encode([document_text(d) for d in corpus]), f"{MODEL_NAME}, encoded here (title: start of text)"


def _minilm_encoder() -> Encode:
    from components.retrieval.minilm import MiniLMRetriever

    return MiniLMRetriever().encode


# -- free-running answers ---------------------------------------------------------------------


def final_answer_text(text: str) -> str:
    """What the answer states as its final answer: after "So the answer is:", else all of it."""
    return text.rsplit(FINAL, 1)[-1].strip() if FINAL in text else text


def answer_scores(prefix: str, generations: Sequence[Generation], references: Sequence) -> dict[str, float]:
    """FanOutQA's loose / strict accuracy of each answer's text, and SQuAD F1 / EM of its final
    answer against the rendered reference, averaged over the questions with a reference."""
    scored = [(final_answer_text(g.text), r) for g, r in zip(generations, references) if r is not None]
    if not scored:
        return {}
    n = len(scored)
    return {f"{prefix}_questions": float(n),
            f"{prefix}_loose_acc": sum(loose_accuracy(r, t) for t, r in scored) / n,
            f"{prefix}_strict_acc": sum(strict_accuracy(r, t) for t, r in scored) / n,
            f"{prefix}_f1": sum(f1(t, render(r)) for t, r in scored) / n,
            f"{prefix}_em": sum(exact_match(t, render(r)) for t, r in scored) / n}


def free_running_block(model: OneGenModel, index: DocumentIndex, examples: Sequence[Example], references: Sequence,
                       minilm_questions: np.ndarray, minilm_docs: np.ndarray, cfg: PipelineConfig) -> tuple[dict, list[dict]]:
    """Every dev question answered with each policy, and MiniLM's pipeline on the same questions."""
    gold = [{d for ids in e.positives for d in ids} for e in examples]
    prompts = [model.formatter.prompt(e.prompt) for e in examples]
    decoder = InStreamDecoder(model, index, config=cfg.evaluate.decoder)
    base = cfg.evaluate.generation.model_copy(update={"temperature": 0.0, "retrieval_threshold": None})
    policies = {"free": base}
    if model.retrieval_threshold is not None:
        policies["free_tau"] = base.model_copy(update={"retrieval_threshold": model.retrieval_threshold})
    metrics: dict[str, float] = {}
    per_question: list[dict] = []
    budget = base.max_retrievals * base.top_k
    theirs = free_running.top_n(minilm_questions, minilm_docs, index.corpus.ids, [budget] * len(examples))
    metrics.update(free_running.summary("minilm_budget", theirs, gold))
    for name, gen_cfg in policies.items():
        generations = free_running.answer(decoder, prompts, gen_cfg, cfg.evaluate.batch_size, progress=f"answering ({name})")
        ours = [free_running.retrieved(g) for g in generations]
        metrics.update(free_running.summary(name, ours, gold, generations))
        matched = free_running.top_n(minilm_questions, minilm_docs, index.corpus.ids, [len(o) for o in ours])
        metrics.update(free_running.summary("minilm_matched" + name.removeprefix("free"), matched, gold))
        metrics.update(answer_scores("answer" + name.removeprefix("free"), generations, references))
        per_question += [{"policy": name, "id": e.id, "question": e.prompt[-1].content, "answer": g.text,
                          "retrieved": [{"doc_ids": h.doc_ids, "titles": h.titles, "scores": h.scores, "step": h.step} for h in g.hops],
                          "gold": sorted(gs), "minilm_budget": t, "reference": r}
                         for e, g, gs, t, r in zip(examples, generations, gold, theirs, references)]
    if model.retrieval_threshold is not None:
        metrics["retrieval_threshold"] = model.retrieval_threshold
    # What a user of the server gets by default (its `threshold` is "calibrated": τ when the model has one).
    metrics["served_evidence_recall"] = metrics[f"{'free_tau' if model.retrieval_threshold is not None else 'free'}_evidence_recall"]
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
    hop's sub-question and each question's reference answer; `encode` stands in for MiniLM."""
    started = time.perf_counter()
    endpoint, data_dir = cfg.storage.s3_endpoint_url, cfg.data.dir.rstrip("/")
    run_id = tracking.run_for(MlflowClient(cfg.mlflow.tracking_uri), cfg.mlflow.experiment, cfg.run_name, "evaluate")
    with tempfile.TemporaryDirectory(prefix="onegen-evaluate-") as tmp:
        scratch = Path(tmp)
        model = load_model(cfg.paths.model, endpoint, scratch / "model")
        index = load_index(cfg.paths.index, endpoint, scratch / "index", model.fingerprint())
        corpus, _ = load_corpus(local_file(f"{data_dir}/{cfg.data.corpus}", endpoint, scratch))
        dev_path = local_file(f"{data_dir}/{cfg.data.dev}", endpoint, scratch)
        rows, failed = encode_dev(dev_path, corpus, model, cfg.evaluate.max_length, scratch)
        examples = list(iter_examples(dev_path, corpus, ScreenReport(source=str(dev_path))))
        questions = read_dev() if questions is None else questions
        leaves = question_leaves(examples, questions, corpus)
        by_id = {q["id"]: q for q in questions}
        encode = encode or _minilm_encoder()
        minilm_docs, minilm_source = minilm_corpus(data_dir, index.corpus, encode, endpoint)

        forced = teacher_forced(model, rows)  # one pass: query vectors and the LM loss
        hops = [(row.id, h) for row in rows for h in range(len(row.positives))]
        ours = Ranking(hops, forced.gold, search_index(index, forced.queries.numpy()))
        known = [i for i, (example_id, _) in enumerate(hops) if example_id in leaves]  # hops with a sub-question
        sub_questions = encode([leaves[hops[i][0]][hops[i][1]]["question"] for i in known]) if known else np.zeros((0, 1))
        theirs = Ranking([hops[i] for i in known], [forced.gold[i] for i in known],
                         search_matrix(sub_questions, minilm_docs, index.corpus.ids))

        references = [by_id[e.id]["answer"] if e.id in by_id else None for e in examples]
        question_vectors = encode([e.prompt[-1].content for e in examples]) if examples else np.zeros((0, 1))
        free, answers = free_running_block(model, index, examples, references, question_vectors, minilm_docs, cfg)
        plain_metrics, plain_lm = plain_lm_comparison(cfg, forced.lm_loss, rows, dev_path, corpus, scratch)
        linking = {kb: linking_block(cfg, kb, model, index, encode, minilm_docs, scratch) for kb in cfg.data.linking_dev}

        indexed = set(index.corpus.ids)  # a gold page outside the index can never be found: count those hops
        metrics = {
            **_prefixed("teacher_forced", ours.metrics(cfg.evaluate.ks)),
            **(_prefixed("minilm", theirs.metrics(cfg.evaluate.ks)) if theirs.gold else {"minilm_queries": 0.0}),
            **free, "heldout_lm_loss": forced.lm_loss, "heldout_lm_tokens": float(forced.lm_tokens), **plain_metrics,
            "dev_questions": float(len(examples)), "dev_rows_failed": float(len(failed)),
            "dev_rows_truncated": float(sum(r.truncated_tokens > 0 for r in rows)),
            "gold_not_indexed": float(sum(not (g & indexed) for g in ours.gold)),
            "index_documents": float(index.ntotal), "corpus_documents": float(len(corpus)),
            **{k: v for kb, block in linking.items() for k, v in block.metrics(linking_prefix(kb)).items()},
            **({"link_threshold": model.link_threshold} if linking and model.link_threshold is not None else {}),
            "evaluate_seconds": time.perf_counter() - started,
        }
        report = EvaluateReport(metrics, list(cfg.evaluate.ks), run_id, plain_lm, minilm_source, failed,
                                _per_hop(ours, theirs), answers)
        _log(cfg, report, ours, theirs, scratch)
    return report


def linking_prefix(kb: str) -> str:
    """MLflow's metric prefix for a knowledge base's linking: el_ (the named entities), el_wordnet_."""
    return "el" if kb == "wikipedia" else f"el_{kb}"


def linking_block(cfg: PipelineConfig, kb: str, model: OneGenModel, index: DocumentIndex, encode: Encode,
                  minilm_docs: np.ndarray, scratch: Path) -> LinkingEvaluation:
    """Entity linking on a knowledge base's held-out texts: `wikipedia`'s entities are the corpus's
    documents (`index`, `minilm_docs`), another base's are its entity index beside the corpus index."""
    endpoint = cfg.storage.s3_endpoint_url
    entities = index if kb == "wikipedia" else load_index(f"{cfg.paths.index}/{KNOWLEDGE_BASES_DIR}/{kb}", endpoint,
                                                          scratch / "knowledge_bases" / kb, model.fingerprint())
    dev_path = local_file(data_file(cfg, cfg.data.linking_dev[kb]), endpoint, scratch)
    dev = list(iter_linked_texts(dev_path, entities.corpus, ScreenReport(source=str(dev_path))))
    train = []
    if kb in cfg.data.linking_train:
        train_path = local_file(data_file(cfg, cfg.data.linking_train[kb]), endpoint, scratch)
        train = iter_examples(train_path, entities.corpus, ScreenReport(source=str(train_path)))
    frequent, minilm = linking_baselines(kb, entities.corpus, train, encode, minilm_docs)
    config = cfg.evaluate.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": LINK_MAX_TOKENS,
                                                        "link_threshold": model.link_threshold})
    return evaluate_linking(model, entities, Matcher.of(entities.corpus), dev, frequent, minilm, cfg.evaluate.linking_sample,
                            config, cfg.evaluate.linking_unambiguous_texts, cfg.evaluate.decoder)


def linking_baselines(kb: str, entities: Corpus, train: Iterable[Example], encode: Encode,
                      minilm_docs: np.ndarray) -> tuple[MostFrequentEntity, MiniLMLinker]:
    """The baseline linkers of a knowledge base. The named entities (`wikipedia`): each surface
    form's most frequent entity in `train`, and MiniLM against the corpus's cached "title:
    description" rows (`minilm_docs`, row i = the corpus's document i). WordNet: the first-listed
    sense, and MiniLM against each candidate's gloss."""
    if kb != "wikipedia":
        return MostFrequentEntity(), MiniLMLinker(encode, lambda ids: encode([document_text(entities.at(entities.position(i))) for i in ids]))
    row = {doc_id: i for i, doc_id in enumerate(entities.ids)}
    return (MostFrequentEntity.from_examples(train, Matcher.of(entities)),
            MiniLMLinker(encode, lambda ids: minilm_docs[[row[i] for i in ids]]))


def encode_dev(dev_path: Path, corpus: Corpus, model: OneGenModel, max_length: int,
               scratch: Path) -> tuple[list[EncodedExample], list[dict]]:
    """The dev rows that encode, and every one that does not with its reason (never dropped silently)."""
    quarantine = scratch / "dev_quarantine.jsonl"
    rows, _ = encode_examples(dev_path, corpus, model.formatter, max_length, quarantine)
    failed = [json.loads(line) for line in quarantine.read_text().splitlines()] if quarantine.exists() else []
    return rows, [{k: r[k] for k in ("row", "field", "kind", "reason")} for r in failed]


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """recall@1 → <prefix>_recall_at_1, mrr → <prefix>_mrr, queries → <prefix>_queries."""
    return {f"{prefix}_{k.replace('@', '_at_')}": float(v) for k, v in metrics.items()}


def _per_hop(ours: Ranking, theirs: Ranking) -> list[dict]:
    minilm_rank = dict(zip(theirs.queries, theirs.ranks()))
    return [{"example": example_id, "hop": hop, "gold": sorted(gold), "teacher_forced_rank": rank,
             "teacher_forced_top": ranked[0] if ranked else None, "minilm_rank": minilm_rank.get((example_id, hop))}
            for (example_id, hop), gold, rank, ranked in zip(ours.queries, ours.gold, ours.ranks(), ours.ranked)]


# -- MLflow -------------------------------------------------------------------------------------


def plot_recall(ours: Ranking, theirs: Ranking, ks: Sequence[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    depth = max(ks)
    fig, ax = plt.subplots(figsize=(6, 4))
    for ranking, label in ((ours, f"OneGen [RQ], teacher-forced ({len(ours.gold)} hops)"), (theirs, f"MiniLM ({len(theirs.gold)} hops)")):
        ax.plot(range(1, depth + 1), ranking.curve(depth), marker="o", markersize=3, label=label)
    ax.set(xlabel="k", ylabel="Recall@k", ylim=(0, 1.02), title="Gold page among the top k of the whole corpus, FanOutQA dev hops")
    ax.set_xticks(list(ks))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log(cfg: PipelineConfig, report: EvaluateReport, ours: Ranking, theirs: Ranking, scratch: Path) -> None:
    from mlflow.entities import Metric

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
              "table": summary_table(report.metrics, report.ks), "plain_lm": report.plain_lm,
              "minilm_documents": report.minilm_documents, "failed_rows": report.failed_rows, "hops": report.hops,
              "answers": report.answers}
    (out / "evaluation.json").write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
    client.log_artifacts(report.run_id, str(out))
