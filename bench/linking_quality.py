"""Q5 and Q6 (entity linking) for a trained model and its index, on one knowledge base: the vital
articles (named entities) or, with `--kb wordnet`, WordNet's synsets (word senses; the most frequent
baseline is then the first-listed sense, MiniLM reads glosses, and the string matcher finds the
text's target word, the word whose sense is asked):

    Q5  linking accuracy on the ambiguous gold mentions of the held-out texts: ours (the `[EL]`
        state after each gold mention, the nearest of the surface form's candidates, as the server
        searches) ÷ the best baseline (the most frequent entity of the surface form in the training
        rows; MiniLM on the text against each candidate's "title: description"), which choose among
        the same candidates; ours over the whole knowledge base is in the JSON too
    Q6  end-to-end EL F1, the model linking free-running as the server does (greedy, link mode, the
        model's calibrated τ for [EL]) ÷ the best baseline pipeline (a string matcher over every
        title and base name, linked by the better of the two baselines), on a seeded random sample
        of the held-out texts (decoding every one of them takes too long on 2 cores; the sample is
        drawn without looking at the labels)

    python -m bench.linking_quality --model .onegen/storage/models/NAME --index .onegen/storage/indexes/NAME \\
        [--kb wikipedia|wordnet] [--data data] [--sample 128]

Both ratios' raw figures, unambiguous mentions and detection P/R/F1 included, go to the JSON files.
"""

from __future__ import annotations

import argparse
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
from components.data.aliases import Matcher
from components.data.screening import ScreenReport, iter_examples, iter_linked_texts
from components.eval import linking as el
from components.retrieval.index import KNOWLEDGE_BASES_DIR, DocumentIndex
from components.retrieval.minilm import MiniLMRetriever
from pipelines.stages.evaluate import linking_baselines, minilm_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_trained_model_args(parser)
    parser.add_argument("--kb", choices=["wikipedia", "wordnet"], default="wikipedia",
                        help="the knowledge base: the vital articles, or WordNet's synsets (its entity index inside --index)")
    parser.add_argument("--sample", type=int, default=128, help="held-out texts linked free-running (seeded random sample)")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    model, index = load_trained(args.model, args.index)
    kb = args.kb
    entities = index if kb == "wikipedia" else DocumentIndex.load(f"{args.index}/{KNOWLEDGE_BASES_DIR}/{kb}", model.fingerprint())
    corpus = entities.corpus  # the vital articles (the named entities), or WordNet's synsets
    dev = list(iter_linked_texts(f"{args.data}/linking_{kb}_dev.jsonl", corpus, ScreenReport(source="dev")))
    train = iter_examples(f"{args.data}/linking_{kb}_train.jsonl", corpus, ScreenReport(source="train"))

    encoder = MiniLMRetriever()
    doc_vectors = minilm_corpus(args.data, corpus, encoder.encode, None)[0] if kb == "wikipedia" else None  # cached by `onegen data build`
    frequent, minilm = linking_baselines(kb, corpus, train, encoder.encode, doc_vectors)
    config = GenerationConfig(max_new_tokens=256, link_threshold=model.link_threshold)  # each text gets its copy budget
    # Q5 on every gold mention of every held-out text; Q6 on a seeded random sample, free-running.
    result = el.evaluate_linking(model, entities, Matcher.of(corpus), dev, frequent, minilm, args.sample, config)
    accuracy, e2e, detection, sample, ours = result.accuracy, result.end_to_end, result.detection, result.sample, result.linked
    pipelines = [k for k in e2e if k != "ours"]
    print({k: {m: round(v, 3) for m, v in a.items()} for k, a in accuracy.items()}, file=sys.stderr)
    print({k: round(v["f1"], 3) for k, v in e2e.items()}, file=sys.stderr)

    common = {"device": device_string("cpu"), "model": args.model, "command": command_line("bench.linking_quality", argv),
              "knowledge_base": f"{'vital articles' if kb == 'wikipedia' else 'WordNet synsets'} ({entities.ntotal})",
              "held_out_texts": len(dev)}
    frequent = "most frequent entity" if kb == "wikipedia" else "first-listed sense"
    best = max(accuracy["most_frequent"]["accuracy_ambiguous"], accuracy["minilm"]["accuracy_ambiguous"])
    write_result(args.out, {
        "id": f"q5_linking_accuracy_ambiguous_{kb}",
        "what": f"linking accuracy on the ambiguous gold mentions of the held-out {kb} texts: ours ([EL] state, "
                f"nearest of the surface form's candidates, as served) ÷ the best baseline ({frequent}; MiniLM), same candidates",
        "ratio": accuracy["ours"]["accuracy_ambiguous"] / best if best else None, "goal": ">= 1.0",
        "met": bool(best) and accuracy["ours"]["accuracy_ambiguous"] >= best, **common, "accuracy": accuracy,
    })
    base_f1 = max(e2e[k]["f1"] for k in pipelines)
    write_result(args.out, {
        "id": f"q6_end_to_end_el_f1_{kb}",
        "what": f"end-to-end EL F1 (span and entity), free-running link mode ÷ the best string-matcher pipeline ({frequent} "
                f"or MiniLM), {len(sample)} held-out texts (seeded random sample)",
        "link_threshold": model.link_threshold,
        "ratio": e2e["ours"]["f1"] / base_f1 if base_f1 else None, "goal": ">= 1.0",
        "met": bool(base_f1) and e2e["ours"]["f1"] >= base_f1, **common, "sample": len(sample),
        "end_to_end": e2e, "detection": detection,
        "examples": [{"text": t.text, "ours": [m.__dict__ for m in found]} for t, found in zip(sample[:3], ours[:3])],
    })
    write_results_md(args.out)


if __name__ == "__main__":
    main()
