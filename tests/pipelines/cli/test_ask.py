import json

import pytest

from components.retrieval.index import build_index
from pipelines.cli.main import main


@pytest.fixture(scope="module")
def saved(trained_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    trained_tiny.model.save_pretrained(root / "model")
    build_index(trained_tiny.model, trained_tiny.corpus).save(root / "index")
    return root


def expected(trained_tiny, question: str):
    """The in-process answer of the same weights, which the command must print."""
    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder

    model = trained_tiny.model
    decoder = InStreamDecoder(model, build_index(model, trained_tiny.corpus))
    return decoder.generate([model.formatter.prompt([{"role": "user", "content": question}])], GenerationConfig())[0]


def test_ask_prints_the_answer_and_the_passages_retrieved_mid_answer(saved, trained_tiny, capsys):
    question = "What is the green cat called?"
    assert main(["ask", question, "--model", str(saved / "model"), "--index", str(saved / "index")]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = expected(trained_tiny, question)
    assert lines[0] == want.text and "[RQ]" not in lines[0]
    assert lines[1].startswith(f"  retrieval 1 after token {want.hops[0].step}: ") and f"[{want.hops[0].doc_ids[0]}]" in lines[1]
    assert "tokens in" in lines[-1]


def test_ask_json_carries_the_trace(saved, trained_tiny, capsys):
    question = "What is the red dog called?"
    assert main(["ask", question, "--model", str(saved / "model"), "--index", str(saved / "index"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hops"][0]["doc_ids"] == expected(trained_tiny, question).hops[0].doc_ids and out["finish_reason"] == "stop"
    assert set(out["timings"]) == {"prefill_s", "decode_s", "search_s", "total_s"}


def test_ask_reports_bad_input_without_a_traceback(saved, tmp_path, capsys):
    assert main(["ask", "q", "--model", str(tmp_path)]) == 2
    assert "not a OneGen model" in capsys.readouterr().err
    assert main(["ask", "q", "--model", str(saved / "model"), "--max_new_tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    assert main(["ask", "q", "--model", str(saved / "model"), "--decoder.matmul_dtype", "int4"]) == 2  # no base recorded
    assert "int4' needs the model's base" in capsys.readouterr().err


def test_link_prints_the_mentions_the_same_weights_find(saved, trained_tiny, capsys):
    from components.config import GenerationConfig
    from components.generation.decoder import InStreamDecoder, KnowledgeBase
    from components.generation.linking import link_texts

    text = "Zorvak met Mibble and the red horse."  # two titles of the corpus: forms [EL] may follow
    assert main(["link", text, "--model", str(saved / "model"), "--index", str(saved / "index"), "--json",
                 "--max_new_tokens", "16"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    index = build_index(trained_tiny.model, trained_tiny.corpus)
    decoder = InStreamDecoder(trained_tiny.model, index, {"wikipedia": KnowledgeBase.of(index, index.corpus)})
    want = link_texts(decoder, [text], config=GenerationConfig(max_new_tokens=16))[0]
    assert out["text"] == text and out["kb"] == "wikipedia"
    assert [(m["text"], m["start"], m["entity_id"]) for m in out["mentions"]] == [(m.text, m.start, m.entity_id) for m in want]


def test_link_reports_bad_input_without_a_traceback(saved, capsys):
    assert main(["link", "a crane", "--model", str(saved / "model")]) == 2
    assert "--index" in capsys.readouterr().err
    assert main(["link", "a crane", "--model", str(saved / "model"), "--index", str(saved / "index"), "--kb", "wordnet",
                 "--target", "crane"]) == 2  # fmt: skip
    assert "no entity index for the 'wordnet'" in capsys.readouterr().err
