import hashlib
import json
import re

import numpy as np
import pytest

from components.data.corpus import Corpus
from components.data.linking import LinkedText, Mention
from components.data.schema import Document
from components.eval.metrics import normalize_answer
from components.retrieval.index import KNOWLEDGE_BASES_DIR, build_index
from pipelines.config import PipelineConfig, load_config
from pipelines.stages.evaluate import evaluate, summary_table
from tests.conftest import ANIMALS, COLORS, NAMES

LONG_PROMPT = "Tell me, please, " + "and also this " * 120 + "what is the red cat called?"  # [RQ] beyond max_length


def fanoutqa_questions(examples) -> list[dict]:
    """FanOutQA-shaped questions for the synthetic rows: one leaf each, whose gold page is the row's."""
    questions = []
    for example, (color, animal) in zip(examples, [(c, a) for c in COLORS for a in ANIMALS]):
        name = example.answer.rsplit(" ", 1)[-1].rstrip(".")
        leaf = {"id": f"{example.id}-0", "question": f"Which {animal} is {color}?", "answer": name,
                "depends_on": [], "evidence": {"title": example.positives[0][0]}}
        questions.append({"id": example.id, "question": example.prompt[0].content, "answer": name, "decomposition": [leaf]})
    return questions


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A stand-in for MiniLM: hashed normalised words, unit length. Deterministic and cheap."""
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in normalize_answer(text).split():
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def stage_inputs(trained_tiny, tmp_path_factory):
    """The trained tiny model and its in-process index where the stages put them, and a dev file of
    its own examples plus one row whose retrieval lies beyond evaluate.max_length."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    data.mkdir()
    trained_tiny.corpus.save_jsonl(data / "corpus.jsonl")
    long_row = trained_tiny.examples[0].model_copy(update={"id": "too-long"}).model_dump()
    long_row["messages"][0]["content"] = LONG_PROMPT
    with open(data / "dev.jsonl", "w") as f:
        for example in trained_tiny.examples:
            f.write(example.model_dump_json() + "\n")
        f.write(json.dumps(long_row) + "\n")
    with open(data / "linking_dev.jsonl", "w") as f:  # the corpus's titles are its named entities
        for i, (a, b) in enumerate(zip(NAMES[:6], NAMES[1:7])):
            text = f"{a} met {b} today."
            spans = [(0, len(a), f"d{i}"), (len(a) + 5, len(a) + 5 + len(b), f"d{i + 1}")]
            f.write(LinkedText(id=f"l{i}", kb="wikipedia", source=f"d{i}", text=text, mentions=[
                Mention(start=s, end=e, entity_id=d, candidates=[d]) for s, e, d in spans]).model_dump_json() + "\n")
    senses = Corpus(WORD_SENSES)  # a second knowledge base, WordNet-shaped: entities named by their aliases
    senses.save_jsonl(data / "entities_wordnet.jsonl")
    with open(data / "linking_wordnet_dev.jsonl", "w") as f:  # the first text's sense is the first listed, the second's is not
        for i, (text, target, gold) in enumerate([("the crane lifted it", "crane", "wordnet:03126580-n"), ("cranes waded", "cranes", "wordnet:02012849-n")]):
            f.write(LinkedText(id=f"w{i}", kb="wordnet", source=gold, text=text, target=target, mentions=[
                Mention(start=0 if i else 4, end=len(target) + (0 if i else 4), entity_id=gold,
                        candidates=["wordnet:03126580-n", "wordnet:02012849-n"])]).model_dump_json() + "\n")
    cfg = stage_config(data, root / "storage", "unused", "unused")
    trained_tiny.model.retrieval_threshold = 0.3  # as if the train stage had calibrated it
    try:
        trained_tiny.model.save_pretrained(cfg.paths.model)
    finally:
        trained_tiny.model.retrieval_threshold = None
    build_index(trained_tiny.model, trained_tiny.corpus).save(cfg.paths.index)
    build_index(trained_tiny.model, senses).save(f"{cfg.paths.index}/{KNOWLEDGE_BASES_DIR}/wordnet")
    return data, root / "storage"


WORD_SENSES = [Document(id="wordnet:03126580-n", title="crane (noun)", text="lifts heavy things", aliases=["crane", "cranes"]),
               Document(id="wordnet:02012849-n", title="crane (noun)", text="a wading bird", aliases=["crane", "cranes"])]


def stage_config(data_dir, root, tracking_uri: str, experiment: str, **evaluate) -> PipelineConfig:
    base = load_config("tiny").model_dump()
    base["data"] = {"dir": str(data_dir), "dev": "dev.jsonl", "corpus": "corpus.jsonl", "entities": {"wordnet": "entities_wordnet.jsonl"},
                    "linking_dev": {"wikipedia": "linking_dev.jsonl", "wordnet": "linking_wordnet_dev.jsonl"}}
    base["storage"] = {"root": str(root)}
    base["mlflow"] = {"tracking_uri": tracking_uri, "experiment": experiment}
    base["evaluate"].update({"max_length": 256, "plain_lm_baseline": True, "linking_sample": 4, **evaluate})
    base["evaluate"]["generation"].update(top_k=1, max_retrievals=4)  # the synthetic task inserts one passage per hop
    return PipelineConfig.model_validate(base)


@pytest.mark.timeout(180, func_only=True)  # the trained_tiny fixture trains first (~1 min)
def test_evaluate_logs_retrieval_answers_and_loss_into_the_training_run(trained_tiny, stage_inputs, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-main")
    client = MlflowClient(mlflow_server)
    train_run = client.create_run(client.create_experiment("evaluate-main"), run_name="tiny", tags={"onegen.stage": "train"})

    report = evaluate(cfg, questions=fanoutqa_questions(trained_tiny.examples), encode=bag_of_words)
    m = report.metrics

    # Teacher-forced recall in the saved (whole-corpus) index is the in-process number, and high.
    assert m["teacher_forced_queries"] == 32 and m["teacher_forced_recall_at_1"] == pytest.approx(trained_tiny.recall_after)
    assert m["teacher_forced_recall_at_1"] >= 0.8
    assert m["teacher_forced_recall_at_10"] >= m["teacher_forced_recall_at_5"] >= m["teacher_forced_recall_at_1"]
    assert 0 < m["teacher_forced_mrr"] <= 1 and m["gold_not_indexed"] == 0
    assert m["index_documents"] == m["corpus_documents"] == 32
    assert m["minilm_queries"] == 32 and 0 <= m["minilm_recall_at_1"] <= m["minilm_recall_at_10"] <= 1
    # The row whose retrieval does not fit is reported, not dropped; it is still asked free-running.
    assert (m["dev_questions"], m["dev_rows_failed"]) == (33, 1)
    assert report.failed_rows[0]["row"] == 33 and report.failed_rows[0]["kind"] == "truncated_retrieval"

    # Free-running: the model answers every question itself; it retrieves mid-answer and copies the name.
    free = [a for a in report.answers if a["policy"] == "free"]
    assert len(free) == 33 and m["free_hops_per_answer"] >= 0.9 and m["free_no_retrieval_rate"] <= 0.1
    gold_found = [bool({d for h in a["retrieved"] for d in h["doc_ids"]} & set(a["gold"])) for a in free]
    assert m["free_evidence_recall"] == pytest.approx(np.mean(gold_found)) and m["free_evidence_recall"] >= 0.75
    # MiniLM's pipeline on the same questions: top N at the budget, and at what the model retrieved.
    assert m["minilm_budget_documents_per_question"] == 4 and 0 <= m["minilm_budget_evidence_recall"] <= 1
    assert m["minilm_matched_documents_per_question"] == pytest.approx(m["free_documents_per_question"])
    # The threshold policy runs too, with the τ stored in the model.
    assert m["retrieval_threshold"] == pytest.approx(0.3) and len([a for a in report.answers if a["policy"] == "free_tau"]) == 33
    assert 0 <= m["free_tau_evidence_recall"] <= 1 and m["free_tau_hops_per_answer"] >= 0.9
    assert m["served_evidence_recall"] == m["free_tau_evidence_recall"]  # the server's default: τ, as calibrated
    # Answers: FanOutQA's loose accuracy counts the reference name said (one string each here).
    names = [q["answer"] for q in fanoutqa_questions(trained_tiny.examples)]
    said = [name.lower() in a["answer"].lower() for name, a in zip(names, free)]
    assert m["answer_questions"] == 32 and m["answer_loose_acc"] == pytest.approx(np.mean(said)) and m["answer_loose_acc"] >= 0.75
    assert m["answer_strict_acc"] == m["answer_loose_acc"] and m["answer_f1"] > 0
    assert m["heldout_lm_loss"] > 0 and m["heldout_lm_tokens"] > 0
    assert report.plain_lm.startswith("not available") and "lm_loss_vs_plain_lm" not in m

    assert report.run_id == train_run.info.run_id
    logged = client.get_run(report.run_id).data.metrics
    for name in ("teacher_forced_recall_at_1", "teacher_forced_mrr", "minilm_recall_at_1", "free_evidence_recall",
                 "free_tau_evidence_recall", "minilm_budget_evidence_recall", "answer_loose_acc", "answer_f1", "heldout_lm_loss"):
        assert logged[name] == pytest.approx(m[name]), name
    assert {a.path for a in client.list_artifacts(report.run_id)} >= {"recall_at_k.png", "evaluation.json"}
    record = json.loads(open(client.download_artifacts(report.run_id, "evaluation.json")).read())
    assert len(record["hops"]) == 32 and {"teacher_forced_rank", "minilm_rank", "gold"} <= set(record["hops"][0])
    assert len(record["answers"]) == 66 and record["table"] == summary_table(m, cfg.evaluate.ks)
    assert client.get_run(report.run_id).data.tags["onegen.evaluate.plain_lm"].startswith("not available")

    table = report.summary()
    assert re.search(r"OneGen \[RQ\]\s+[01]\.\d{3}", table) and "MiniLM top-N (budget)" in table
    assert "failed dev row 33: truncated_retrieval" in table

    # Entity linking beside RAG: every gold mention (12, each name the title of one document), then
    # 4 texts (a seeded sample) end to end, where the string matcher finds every gold span.
    assert (m["el_ours_mentions_unambiguous"], m["el_ours_mentions_ambiguous"], m["el_texts_linked"]) == (12, 0, 4)
    assert m["el_ours_accuracy_unambiguous"] == m["el_most_frequent_accuracy_unambiguous"] == m["el_minilm_accuracy_unambiguous"] == 1.0
    assert 0 <= m["el_ours_whole_knowledge_base_accuracy_unambiguous"] <= 1
    assert m["el_string_match_minilm_end_to_end_f1"] == m["el_string_match_detection_f1"] == 1.0
    assert m["el_ours_end_to_end_gold"] == 8 and 0 <= m["el_ours_end_to_end_f1"] <= m["el_ours_detection_f1"] <= 1
    assert logged["el_ours_accuracy_unambiguous"] == 1.0
    assert re.search(r"OneGen \[EL\], whole base\s+nan\s+[01]\.\d{3}", table) and "string match + MiniLM" in table
    # Word senses, from the entity index beside the corpus's: the target word alone is detected, and
    # the first-listed sense is right for one text of two.
    assert (m["el_wordnet_ours_mentions_ambiguous"], m["el_wordnet_texts_linked"]) == (2, 2)
    assert m["el_wordnet_most_frequent_accuracy_ambiguous"] == 0.5 and 0 <= m["el_wordnet_ours_accuracy_ambiguous"] <= 1
    assert m["el_wordnet_string_match_detection_f1"] == 1.0 and 0 <= m["el_wordnet_ours_end_to_end_f1"] <= 1
    assert "held-out WordNet example sentences" in table and "string match + first-listed sense" in table


@pytest.mark.timeout(180, func_only=True)  # the trained_tiny fixture trains first (~1 min)
def test_plain_lm_comparison_and_a_run_of_its_own_when_there_is_no_training_run(trained_tiny, stage_inputs, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-alone")
    trained_tiny.model.save_pretrained(cfg.paths.model + "-plain-lm")  # the same weights: exactly no difference

    report = evaluate(cfg, questions=[], encode=bag_of_words)

    m = report.metrics
    assert m["plain_lm_heldout_lm_loss"] == pytest.approx(m["heldout_lm_loss"]) and abs(m["lm_loss_vs_plain_lm"]) < 1e-6
    assert m["lm_loss_within_2pct"] == 1.0 and report.plain_lm.endswith("tiny-plain-lm")
    assert m["minilm_queries"] == 0 and "answer_questions" not in m  # no FanOutQA questions: no sub-questions, no references
    run = MlflowClient(mlflow_server).get_run(report.run_id)
    assert run.info.run_name == "tiny" and run.data.tags["onegen.stage"] == "evaluate"
    assert run.data.metrics["lm_loss_within_2pct"] == 1.0


@pytest.mark.real_model
@pytest.mark.timeout(180, func_only=True)
def test_the_real_minilm_baseline_runs_over_the_index_documents(trained_tiny, stage_inputs, mlflow_server):
    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-minilm", plain_lm_baseline=False)
    report = evaluate(cfg, questions=fanoutqa_questions(trained_tiny.examples))
    assert report.metrics["minilm_queries"] == 32 and "encoded here" in report.minilm_documents
    assert report.metrics["minilm_recall_at_10"] >= 0.5  # "Which cat is red?" against "Zorvak: The red cat is called Zorvak."
