"""Q5 and Q6 (entity linking, the vital-article knowledge base) for a trained model and its index:

    Q5  linking accuracy on the ambiguous gold mentions of the held-out texts: ours (the `[EL]`
        state after each gold mention, nearest entity of the whole knowledge base, as the server
        searches) ÷ the best baseline (the most frequent entity of the surface form in the training
        rows; MiniLM on the text against each candidate's "title: description"), which choose among
        the candidates; ours among the same candidates is in the JSON too
    Q6  end-to-end EL F1, the model linking free-running as the server does (greedy, link mode) ÷
        the baseline pipeline (a string matcher over every title and base name, linked by the most
        frequent entity), on a seeded random sample of the held-out texts (decoding every one of
        them takes too long on 2 cores; the sample is drawn without looking at the labels)

    python -m bench.linking_quality --model .onegen/storage/models/NAME --index .onegen/storage/indexes/NAME \\
        [--data data] [--sample 96]

Both ratios' raw figures, unambiguous mentions and detection P/R/F1 included, go to the JSON files.
"""

from __future__ import annotations

import argparse
import random
import sys

from bench.common import (
    RESULTS_DIR,
    add_trained_model_args,
    command_line,
    device_string,
    load_trained,
    write_result,
    write_results_md,
)
from components.config import GenerationConfig
from components.data.screening import ScreenReport, iter_examples, iter_linked_texts
from components.datasets.named_entities import Matcher, surface_forms
from components.datasets.vital_articles import read_summaries, vital_articles
from components.eval import linking as el
from components.generation.decoder import InStreamDecoder
from components.generation.linking import link_texts
from components.retrieval.minilm import MiniLMRetriever
from pipelines.stages.evaluate import minilm_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--sample", type=int, default=96, help="held-out texts linked free-running (seeded random sample)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    model, index = load_trained(args.model, args.index)
    corpus = index.corpus  # the vital articles: the named-entity knowledge base
    dev = list(iter_linked_texts(f"{args.data}/linking_wikipedia_dev.jsonl", corpus, ScreenReport(source="dev")))
    train = iter_examples(f"{args.data}/linking_wikipedia_train.jsonl", corpus, ScreenReport(source="train"))
    frequent = el.MostFrequentEntity.from_examples(train)

    # Q5: every gold mention of every held-out text.
    encoder = MiniLMRetriever()
    doc_vectors, _ = minilm_corpus(args.data, corpus, encoder.encode, None)  # cached by `onegen data build`
    row = {d: i for i, d in enumerate(corpus.ids)}
    minilm = el.MiniLMLinker(encoder.encode, lambda ids: doc_vectors[[row[i] for i in ids]])  # the cached "title: description" rows
    vectors = el.gold_mention_vectors(model, corpus, dev)  # the [EL] state after each gold mention
    accuracy = {
        "ours": el.linking_accuracy(dev, el.nearest_entities(index, vectors, dev)),
        "ours_among_candidates": el.linking_accuracy(dev, el.nearest_candidates(dev, vectors, index.vectors)),
        "most_frequent": el.linking_accuracy(dev, frequent.link(dev)),
        "minilm": el.linking_accuracy(dev, minilm.link(dev)),
    }
    print({k: {m: round(v, 3) for m, v in a.items()} for k, a in accuracy.items()}, file=sys.stderr)

    # Q6: a seeded random sample, linked free-running and by the string-match pipeline.
    sample = random.Random(0).sample(dev, min(args.sample, len(dev)))
    decoder = InStreamDecoder(model, index, {"wikipedia": index})
    ours = []
    for start in range(0, len(sample), 16):
        batch = sample[start:start + 16]
        ours += link_texts(decoder, [t.text for t in batch], config=GenerationConfig(max_new_tokens=64))
    predicted = [[el.Predicted(m.start, m.end, m.entity_id) for m in found if m.start is not None] for found in ours]
    matcher = Matcher(surface_forms(vital_articles(read_summaries())))
    pipeline = el.string_match_pipeline(sample, matcher, frequent)
    e2e = {"ours": el.end_to_end(sample, predicted), "string_match_most_frequent": el.end_to_end(sample, pipeline)}
    detection = {"ours": el.detection(sample, predicted), "string_match": el.detection(sample, pipeline)}
    print({k: round(v["f1"], 3) for k, v in e2e.items()}, file=sys.stderr)

    common = {"device": device_string("cpu"), "model": args.model, "command": command_line("bench.linking_quality", argv),
              "knowledge_base": f"vital articles ({index.ntotal})", "held_out_texts": len(dev)}
    best = max(accuracy["most_frequent"]["accuracy_ambiguous"], accuracy["minilm"]["accuracy_ambiguous"])
    write_result(args.out, {
        "id": "q5_linking_accuracy_ambiguous_wikipedia",
        "what": "linking accuracy on the ambiguous gold mentions of the held-out vital-article texts: ours ([EL] state, "
                "nearest of the whole knowledge base) ÷ the best baseline (most frequent entity; MiniLM over the candidates)",
        "ratio": accuracy["ours"]["accuracy_ambiguous"] / best if best else None, "goal": ">= 1.0",
        "met": bool(best) and accuracy["ours"]["accuracy_ambiguous"] >= best, **common, "accuracy": accuracy,
    })
    base_f1 = e2e["string_match_most_frequent"]["f1"]
    write_result(args.out, {
        "id": "q6_end_to_end_el_f1_wikipedia",
        "what": f"end-to-end EL F1 (span and entity), free-running link mode ÷ string matcher + most frequent entity, "
                f"{len(sample)} held-out texts (seeded random sample)",
        "ratio": e2e["ours"]["f1"] / base_f1 if base_f1 else None, "goal": ">= 1.0",
        "met": bool(base_f1) and e2e["ours"]["f1"] >= base_f1, **common, "sample": len(sample),
        "end_to_end": e2e, "detection": detection,
        "examples": [{"text": t.text, "ours": [m.__dict__ for m in found]} for t, found in zip(sample[:3], ours[:3])],
    })
    write_results_md(args.out)


if __name__ == "__main__":
    main()
