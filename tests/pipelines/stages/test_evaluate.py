import hashlib
import json
import re

import numpy as np
import pytest

from components.eval.metrics import normalize_answer
from components.retrieval.index import build_index
from pipelines.config import PipelineConfig, load_config
from pipelines.stages.evaluate import evaluate, loose_accuracy
from tests.conftest import ANIMALS, COLORS

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
    cfg = stage_config(data, root / "storage", "unused", "unused")
    trained_tiny.model.save_pretrained(cfg.paths.model)
    build_index(trained_tiny.model, trained_tiny.corpus).save(cfg.paths.index)
    return data, root / "storage"


def stage_config(data_dir, root, tracking_uri: str, experiment: str, **evaluate) -> PipelineConfig:
    base = load_config("tiny").model_dump()
    base["data"] = {"dir": str(data_dir), "dev": "dev.jsonl", "corpus": "corpus.jsonl"}
    base["storage"] = {"root": str(root)}
    base["mlflow"] = {"tracking_uri": tracking_uri, "experiment": experiment}
    base["evaluate"].update({"max_length": 256, "answers": 4, "plain_lm_baseline": True, **evaluate})
    return PipelineConfig.model_validate(base)


@pytest.mark.timeout(120, func_only=True)  # the trained_tiny fixture trains first (~1 min)
def test_evaluate_logs_retrieval_answers_and_loss_into_the_training_run(trained_tiny, stage_inputs, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-main")
    client = MlflowClient(mlflow_server)
    train_run = client.create_run(client.create_experiment("evaluate-main"), run_name="tiny", tags={"onegen.stage": "train"})

    report = evaluate(cfg, questions=fanoutqa_questions(trained_tiny.examples), encode=bag_of_words)
    m = report.metrics

    # Teacher-forced recall in the saved index is the in-process number, and high.
    assert m["in_stream_queries"] == 32 and m["in_stream_recall_at_1"] == pytest.approx(trained_tiny.recall_after)
    assert m["in_stream_recall_at_1"] >= 0.8
    assert m["in_stream_recall_at_10"] >= m["in_stream_recall_at_5"] >= m["in_stream_recall_at_1"]
    assert 0 < m["in_stream_mrr"] <= 1 and m["in_stream_gold_not_indexed"] == 0
    assert m["minilm_queries"] == 32 and 0 <= m["minilm_recall_at_1"] <= m["minilm_recall_at_10"] <= 1
    # The row whose retrieval does not fit is reported, not dropped.
    assert (m["dev_rows"], m["dev_rows_failed"]) == (32, 1)
    assert report.failed_rows[0]["row"] == 33 and report.failed_rows[0]["kind"] == "truncated_retrieval"
    # Free generation: the tiny model retrieves in-stream and says "It is called <name>.", copying the
    # name from the passage it retrieved: most answers are the reference word for word.
    assert m["answer_questions"] == 4 and m["answer_f1"] > 0.5 and m["answer_em"] >= 0.5
    names = [q["decomposition"][0]["answer"] for q in fanoutqa_questions(trained_tiny.examples[:4])]
    said = [name.lower() in a["generated"].lower() for name, a in zip(names, report.answers)]
    assert m["answer_loose_acc"] == pytest.approx(np.mean(said)) and m["answer_loose_acc_questions"] == 4
    assert sum(a["retrieved"][:1] == [a["gold"][0]] for a in report.answers) >= 3  # the gold page, mid-answer
    assert m["heldout_lm_loss"] > 0 and m["heldout_lm_tokens"] > 0
    assert report.plain_lm.startswith("not available") and "lm_loss_vs_plain_lm" not in m

    assert report.run_id == train_run.info.run_id
    logged = client.get_run(report.run_id).data.metrics
    for name in ("in_stream_recall_at_1", "in_stream_recall_at_5", "in_stream_recall_at_10", "in_stream_mrr",
                 "minilm_recall_at_1", "minilm_mrr", "answer_loose_acc", "answer_f1", "answer_em", "heldout_lm_loss"):
        assert logged[name] == pytest.approx(m[name]), name
    assert {a.path for a in client.list_artifacts(report.run_id)} >= {"recall_at_k.png", "evaluation.json"}
    record = json.loads(open(client.download_artifacts(report.run_id, "evaluation.json")).read())
    assert len(record["hops"]) == 32 and {"in_stream_rank", "minilm_rank", "gold"} <= set(record["hops"][0])
    assert client.get_run(report.run_id).data.tags["onegen.evaluate.plain_lm"].startswith("not available")

    table = report.summary()
    assert re.search(r"k\s+\| in-stream \| MiniLM", table) and "failed dev row 33: truncated_retrieval" in table


@pytest.mark.timeout(120, func_only=True)  # the trained_tiny fixture trains first (~1 min)
def test_plain_lm_comparison_and_a_run_of_its_own_when_there_is_no_training_run(trained_tiny, stage_inputs, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-alone", answers=0)
    trained_tiny.model.save_pretrained(cfg.paths.model + "-plain-lm")  # the same weights: exactly no difference

    report = evaluate(cfg, questions=[], encode=bag_of_words)

    m = report.metrics
    assert m["plain_lm_heldout_lm_loss"] == pytest.approx(m["heldout_lm_loss"]) and abs(m["lm_loss_vs_plain_lm"]) < 1e-6
    assert m["lm_loss_within_2pct"] == 1.0 and report.plain_lm.endswith("tiny-plain-lm")
    assert m["minilm_queries"] == 0 and "answer_questions" not in m  # no FanOutQA questions, no answers asked for
    run = MlflowClient(mlflow_server).get_run(report.run_id)
    assert run.info.run_name == "tiny" and run.data.tags["onegen.stage"] == "evaluate"
    assert run.data.metrics["lm_loss_within_2pct"] == 1.0


def test_loose_accuracy_counts_the_sub_answers_stated():
    said = "Pat Burrell bats right; the other, The Left."
    assert loose_accuracy(said, ["Pat Burrell", "left", "Mark Mulder"]) == pytest.approx(2 / 3)
    assert loose_accuracy("anything", ["", "."]) is None  # nothing to find: not counted as 0


@pytest.mark.real_model
@pytest.mark.timeout(180, func_only=True)
def test_the_real_minilm_baseline_runs_over_the_index_documents(trained_tiny, stage_inputs, mlflow_server):
    cfg = stage_config(*stage_inputs, mlflow_server, "evaluate-minilm", answers=0, plain_lm_baseline=False)
    report = evaluate(cfg, questions=fanoutqa_questions(trained_tiny.examples))
    assert report.metrics["minilm_queries"] == 32 and report.minilm_documents.startswith("encoded here")
    assert report.metrics["minilm_recall_at_10"] >= 0.5  # "Which cat is red?" against "Zorvak: The red cat is called Zorvak."
