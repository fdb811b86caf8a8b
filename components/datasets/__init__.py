"""Dataset builders for the real sources (DATA.md), one idea per file:

    packages.py        finding the data files inside installed packages, without importing them
    vital_articles.py  the corpus: Wikipedia vital-article summaries
    fanoutqa.py        multi-hop questions → examples with one [RQ] per in-corpus leaf
    inverse_cloze.py   self-supervised query → article examples
    negatives.py       hard negatives mined with MiniLM
    build.py           all of it → corpus / train / dev JSONL, re-validated, with counts
    config.py          BuildConfig, build.py's options (no torch import: the CLI reads it)
"""
