"""The in-stream benchmarks end to end on the tiny model (`python -m bench.in_stream --quick`, in
this process): they must run and write well-formed results. Goals are measured, never asserted here."""

import json
import math
from pathlib import Path

import pytest

from bench.common import REPO, REQUIRED, render_results_md
from bench.in_stream import main
from components.testing import head_calls

IDS = ["p1_in_stream_overhead", "p2_vs_pipeline_same_size", "p3_vs_pipeline_minilm", "p4_decode_vs_hf_generate",
       "p5_batch_8_vs_1", "gritlm_caching"]


def small_data(directory: Path) -> Path:
    """corpus.jsonl and dev.jsonl in the shape `onegen data build` writes, for a checkout without data/."""
    directory.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(directory / "corpus.jsonl", "w") as f:
        for i in range(60):
            text = " ".join(f"{words[(i + j) % len(words)]} {j}." for j in range(40))
            f.write(json.dumps({"id": f"d{i}", "title": f"Doc {i}", "text": text}) + "\n")
    with open(directory / "dev.jsonl", "w") as f:
        for i in range(10):
            messages = [{"role": "user", "content": f"What is item {i} of the list?"},
                        {"role": "assistant", "content": f"Item {i}?[RQ] It is {words[i]}."}]
            f.write(json.dumps({"id": f"q{i}", "messages": messages, "positives": [[f"d{i}"]], "negatives": [[]]}) + "\n")
    return directory


@pytest.mark.real_model  # MiniLM (the P3 baseline) loads from its package
def test_the_quick_run_writes_every_result_and_the_table(tmp_path):
    data = REPO / "data"
    if not (data / "corpus.jsonl").is_file() or not (data / "dev.jsonl").is_file():
        data = small_data(tmp_path / "data")
    out = tmp_path / "results"
    assert main(["--quick", "--model", "tiny", "--out", str(out), "--data", str(data)]) == 0

    results = {}
    for id_ in IDS:
        result = json.loads((out / f"{id_}.json").read_text())
        results[id_] = result
        assert result["id"] == id_
        for key in REQUIRED:
            assert key in result, f"{id_} lacks {key}"
        ratio = result["ratio"]
        assert isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0
        assert result["device"] and result["model"] and result["command"].startswith("python -m bench.in_stream --quick")
        assert isinstance(result["met"], bool) or (result["goal"] is None and result["met"] is None)
    assert results["p4_decode_vs_hf_generate"]["tokens_identical"] is True
    # raw numbers are kept, not only the ratio
    p1 = results["p1_in_stream_overhead"]
    assert len(p1["loop"]["samples_s"]["in_stream"]) == len(p1["loop"]["cpu_s"]["in_stream"]) == p1["reps"]
    assert p1["loop"]["basis"] and p1["ratio_detail"]["ratio_cpu_time"] > 0
    assert [h["step"] for h in p1["hops"]] == p1["plan"]["hop_steps"]
    assert all(p1["schedule_held"].values()) and all(p1["same_tokens_as_in_stream_reference"].values())
    memory = results["p3_vs_pipeline_minilm"]["memory"]
    assert all(v > 0 for v in memory["peak_rss_mib"].values()) and memory["peak_rss_ratio"] > 0
    p5 = results["p5_batch_8_vs_1"]
    assert p5["ratio_retrieval_on"] > 0 and p5["ratio_retrieval_off"] > 0
    assert [p["length"] for p in results["gritlm_caching"]["per_length"]]

    table = (tmp_path / "RESULTS.md").read_text()
    for id_ in IDS:
        assert f"`{id_}`" in table


def test_the_table_shows_a_reference_row_with_its_recalls():
    row = {"id": "minilm_baseline", "device": "cpu", "model": "MiniLM", "command": "python -m bench.minilm_baseline",
           "recall@1": 0.7222, "recall@5": 0.9068, "recall@10": 0.9462}
    table = render_results_md([row])
    assert "`minilm_baseline`" in table and "R@1 0.722" in table and "R@10 0.946" in table


def test_forced_schedule_calls_account_for_the_decoder_feeding_rq():
    # in-stream: feeding each [RQ] is one more head call whose logits are not sampled
    assert head_calls([8, 24, 40], rq_fed_by_decoder=True) == {8, 25, 42}
    # pipeline: the re-prefill after a hop samples the next token itself
    assert head_calls([8, 24, 40], rq_fed_by_decoder=False) == {8, 24, 40}
