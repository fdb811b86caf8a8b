"""`gritlm_caching`: GritLM's RAG caching protocol, latency with the document's KV cached ÷ without,
at several document lengths (no goal: a reference).

    python -m bench.gritlm_caching [--quick] [--model smollm2|tiny|DIR] [--device cpu|cuda] [--out bench/results]
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from bench.common import interleave, load_average, median, timed
from bench.in_stream_setup import Setup, plain_decode, run_alone


def document_tokens(setup: Setup, n: int) -> list[int]:
    """At least `n` tokens of vital-article text (or all the corpus gives), article after article."""
    body: list[int] = []
    for doc in setup.corpus:
        body += setup.model.formatter.text(f"{doc.title}\n{doc.text}\n\n")
        if len(body) >= n:
            break
    return body


def measure(setup: Setup) -> dict:
    from transformers import DynamicCache

    from components import tokens as st

    plan, model, device = setup.plan, setup.model, setup.device
    started, load0 = time.perf_counter(), load_average()
    enc = model.formatter
    query = enc.prompt([{"role": "user", "content": setup.questions[0]}])
    suppress = sorted(enc.eos_ids)
    body = document_tokens(setup, max(plan.caching_lengths))
    opening, closing = enc.special[st.PARAGRAPH_OPEN], enc.special[st.PARAGRAPH_CLOSE]
    limit = getattr(model.hf.config.get_text_config(), "max_position_embeddings", None)
    new = plan.caching_new_tokens
    per_length, skipped = [], []
    for length in plan.caching_lengths:
        if limit and length + len(query) + new > limit:
            skipped.append({"length": length, "why": f"beyond the model's {limit} positions"})
            continue
        if len(body) < length - 2:
            skipped.append({"length": length, "why": f"the corpus gives only {len(body)} tokens"})
            continue
        doc = [opening, *body[: length - 2], closing]
        with torch.no_grad():
            doc_cache = DynamicCache()
            model.hf.get_decoder()(input_ids=torch.tensor([doc], device=device), past_key_values=doc_cache, use_cache=True)

        def no_cache(doc=doc):
            return timed(lambda: plain_decode(model, doc + query, new_tokens=new, suppress=suppress), device)

        def cached(doc_cache=doc_cache):
            cache = copy.deepcopy(doc_cache)  # not timed: the document's KV was computed beforehand
            return timed(lambda: plain_decode(model, query, new_tokens=new, cache=cache, suppress=suppress), device)

        warmup = 1 if length < plan.caching_warmup_below else 0
        setup.log(f"GritLM caching: {length} document tokens, {plan.caching_reps} rounds (+{warmup} warmup) ...")
        runs = interleave({"no_cache": no_cache, "doc_cached": cached}, plan.caching_reps, warmup=warmup, log=setup.log,
                          **setup.rounds(plan.caching_reps))
        raw = runs.report({"cached_over_no_cache": ("doc_cached", "no_cache")})
        per_length.append({
            "length": length, "query_tokens": len(query), "new_tokens": new,
            "ratio": runs.ratio("doc_cached", "no_cache"),
            "prefill_s_median": {k: median(r[1] for r in runs.used_results(k)) for k in runs.names},
            "decode_s_median": {k: median(r[2] for r in runs.used_results(k)) for k in runs.names},
            "same_tokens": all(a[0] == b[0] for a, b in zip(runs.results["no_cache"], runs.results["doc_cached"])),
            **raw,
        })
        del doc_cache
    head = per_length[-1]
    return setup.save(setup.base(
        "gritlm_caching",
        f"GritLM's RAG caching protocol: latency with the document's KV cached ÷ without, batch 1, {new} new tokens, "
        f"at {head['length']} document tokens (all lengths in the JSON)",
        head["ratio"], None, None,
        "GritLM's latency protocol: a document of L tokens (vital-article text concatenated to length, as a "
        "`<paragraph> … </paragraph>` chunk), then a short query (a dev question in the chat template), then "
        f"{new} greedy tokens (EOS suppressed), batch 1, a lean KV-cache loop. (a) no caching: prefill "
        "document + query, decode. (b) document KV cached: the document's KV is computed beforehand and "
        "deep-copied per repetition outside the timer; only the query is prefilled on it, then decode. Ratio "
        "(b) ÷ (a) per length; headline at the longest length measured. No goal from the issue. Only lengths "
        f"below {plan.caching_warmup_below} get a warmup round (the process is warm by then; a no-cache call "
        "at 4000 tokens takes tens of seconds on CPU).",
        per_length=per_length, skipped=skipped, headline_length=head["length"],
        reps=plan.caching_reps, loadavg_start=load0, seconds=time.perf_counter() - started,
        details_md=[
            "; ".join(f"{p['length']}: {p['medians_s']['no_cache']:.2f}s → {p['medians_s']['doc_cached']:.2f}s "
                      f"(× {p['ratio']:.3f})" for p in per_length) + f" (basis: {per_length[-1]['basis']})",
        ],
    ))


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, "bench.gritlm_caching", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
