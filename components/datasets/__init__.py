"""Dataset builders for the real sources (DATA.md; their files are found by components/packages.py),
one idea per file:

    vital_articles.py  the corpus: Wikipedia vital-article summaries
    fanoutqa.py        multi-hop questions → walks with one [RQ] per in-corpus leaf; each leaf asked alone
    inverse_cloze.py   self-supervised query → article examples
    negatives.py       hard negatives mined with MiniLM
    build.py           all of it → corpus / train / dev JSONL, re-validated, with counts
    config.py          BuildConfig, build.py's options (no torch import: the CLI reads it)
"""
