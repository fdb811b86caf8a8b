"""P8: documents embedded per second by the index stage's Ray Data actor pool, as a ratio of the
in-process batched loop (`components.retrieval.index.build_index`): same model, same documents, same batch
size, the same cores. Goal: ≥ 0.9, i.e. Ray Data costs at most 10% of the throughput.

    .venv/bin/python -m bench.index_throughput [--docs 400] [--batch-size 32] [--reps 3]
        [--actors 2] [--cpus-per-actor 1] [--model smollm2|DIR] [--out bench/results]

Each timed Ray call is what the stage does: a fresh actor pool starts, every actor loads the saved
model, the documents are embedded and put back in corpus order, and the FAISS index is built. The
in-process call has its model in memory already and builds the same index. So the ratio charges
Ray with its start-up and the model load; the JSON also gives the model load time and a
steady-state ratio with one load per actor taken out, to show where the difference goes.
Reps are interleaved (in-process, Ray, in-process, ...) and medians taken.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import (
    RESULTS_DIR,
    command_line,
    device_string,
    interleave,
    load_average,
    median,
    timed,
    write_result,
    write_results_md,
)
from components.data.corpus import Corpus
from components.model.base import load_base
from components.model.onegen import OneGenModel
from components.retrieval.index import build_from_vectors, build_index
from pipelines.config import load_config
from pipelines.stages.index import embed_corpus

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
GOAL = 0.9


def load_model(source: str) -> OneGenModel:
    """SmolLM2 with OneGen's tokens, in the CPU preset's document format; or a saved OneGen model."""
    if Path(source).is_dir():
        return OneGenModel.from_pretrained(source)
    lm, tokenizer = load_base(source)
    return OneGenModel.build(lm, tokenizer, load_config("smollm2-cpu").train.model.format)


def first_documents(data_dir: Path, n: int) -> Corpus:
    return Corpus(doc for doc, _ in zip(Corpus.load_jsonl(data_dir / "corpus.jsonl"), range(n)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    os.environ.update(RAY_ENV)
    import ray

    corpus = first_documents(args.data, args.docs)
    model = load_model(args.model).eval()
    with tempfile.TemporaryDirectory(prefix="p8-model-") as model_dir:
        model.save_pretrained(model_dir)  # what the actors load, as from the train stage's output
        load_s = median(time_load(model_dir) for _ in range(2))
        # As many logical CPUs as the actors reserve: the pool uses the same cores as the loop.
        ray.init(num_cpus=max(1, round(args.actors * args.cpus_per_actor)), include_dashboard=False,
                 object_store_memory=300 * 1024**2, log_to_driver=False)
        try:
            runs = interleave({
                "in_process": lambda: timed(lambda: build_index(model, corpus, batch_size=args.batch_size)),
                "ray_data": lambda: timed(lambda: ray_index(corpus, model_dir, model.fingerprint(), args)),
            }, reps=args.reps, warmup=1, max_rounds=args.reps, log=lambda line: print(line, file=sys.stderr, flush=True))
        finally:
            ray.shutdown()

    # docs/s of Ray over docs/s in-process, same documents: the inverse ratio of their times.
    raw = runs.report({"ratio": ("in_process", "ray_data")})
    in_process, ray_data = runs.med("in_process"), runs.med("ray_data")
    ratio = in_process / ray_data
    # The actors load the model in parallel: one load time comes off, not `actors` of them.
    steady = in_process / max(ray_data - load_s, 1e-9)
    same = all(same_vectors(a, b) for a, b in zip(runs.used_results("in_process"), runs.used_results("ray_data")))
    result = {
        "id": "p8_ray_data_embedding",
        "what": f"index stage embedding throughput: Ray Data actor pool ({args.actors} actor(s) × {args.cpus_per_actor:g} CPU) "
                f"÷ the in-process batched loop, {len(corpus)} documents, batch {args.batch_size}",
        "ratio": ratio,
        "goal": f">= {GOAL}",
        "met": ratio >= GOAL,
        "device": device_string(),
        "model": args.model if Path(args.model).is_dir() else "SmolLM2-135M-Instruct (fp32, OneGen tokens, max_document_tokens "
                 f"{model.formatter.format.max_document_tokens})",
        "command": command_line("bench.index_throughput", argv),
        "documents": len(corpus),
        "batch_size": args.batch_size,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "in_process_docs_per_s": len(corpus) / in_process,
        "ray_data_docs_per_s": len(corpus) / ray_data,
        "model_load_s": load_s,
        "steady_state_ratio": steady,
        "same_index": same,
        "runs": raw,
        "load_average": load_average(),
        "notes": "Ray's time includes starting the actor pool and each actor loading the saved model (the stage pays "
                 "both); `steady_state_ratio` takes one model load out. Medians of interleaved rounds after one warm-up "
                 "round each. The machine is shared: `runs.others_cores` counts the Ray actors' own work as other "
                 "processes' load, so Ray rounds never count as quiet and the medians are over all rounds; "
                 "`runs.ratio.ratio_cpu_time` is meaningless here (the driver's CPU time leaves out the actors').",
    }
    path = write_result(args.out, result)
    write_results_md(args.out)
    print(f"P8 ratio {ratio:.3f} (goal >= {GOAL}): in-process {len(corpus) / in_process:.1f} docs/s, "
          f"Ray Data {len(corpus) / ray_data:.1f} docs/s; steady state {steady:.3f}; -> {path}")
    return 0


def ray_index(corpus: Corpus, model_dir: str, fingerprint: str, args: argparse.Namespace):
    """The stage's embedding and index build; (index, vectors) so the check below can compare."""
    vectors = embed_corpus(corpus, model_dir, fingerprint, None, args.batch_size, args.actors, args.cpus_per_actor)
    return build_from_vectors(vectors, corpus, fingerprint), vectors


def same_vectors(in_process, ray_result, tolerance: float = 1e-5) -> bool:
    """Every Ray vector finds its own document first in the in-process index, at cosine ~1."""
    _, vectors = ray_result
    scores, positions = in_process.search_arrays(vectors, 1)
    return bool((positions[:, 0] == np.arange(len(vectors))).all() and (np.abs(scores[:, 0] - 1) < tolerance).all())


def time_load(model_dir: str) -> float:
    return timed(lambda: OneGenModel.from_pretrained(model_dir))[0]


if __name__ == "__main__":
    sys.exit(main())
