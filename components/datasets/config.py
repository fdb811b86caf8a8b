"""The options of `build_datasets` (build.py), apart from it so that reading them (the
`onegen data build` flags) does not import the builders, which import torch."""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveInt

from components.config import FrozenConfig

# Lee et al. (2019) cut the query sentence out of its context this often, so that inverse cloze
# teaches matching by meaning rather than by copying (components/datasets/inverse_cloze.py).
REDACT_RATE = 0.9


class BuildConfig(FrozenConfig):
    dev_fraction: float = Field(
        0.5, ge=0, le=1, description="share of FanOutQA questions in dev (by id hash); inverse-cloze rows are all train"
    )
    negatives: NonNegativeInt = Field(3, description="MiniLM hard negatives per FanOutQA hop (0: no MiniLM at all)")
    ict_limit: NonNegativeInt | None = Field(None, description="inverse-cloze examples; None: one per article")
    seed: int = Field(
        0, description="inverse-cloze sentence, negative and sample choice; the FanOutQA split does not depend on it"
    )
    ict_redact_rate: float = Field(REDACT_RATE, ge=0, le=1, description="share of inverse-cloze rows whose sentence is cut from the article")
    linking: bool = Field(True, description="build the entity-linking texts and rows (vital articles and WordNet)")
    linking_dev_fraction: float = Field(
        0.2, ge=0, le=1, description="share of linking sources held out, by id hash: vital articles, and WordNet synsets (with all their example sentences)"
    )
    linking_negatives: NonNegativeInt = Field(3, description="hard negatives per mention: other entities sharing its surface form")
    wordnet_dir: str = Field("/usr/share/wordnet", description="WordNet 3.0's data files (Debian's wordnet-base)")
    wordnet_lemmas: PositiveInt | None = Field(
        2000, description="the WordNet knowledge base is every synset of this many lemmas, a seeded random sample among "
                          "those with a mention; None: all 117,659 synsets"
    )
    corpus_sample: PositiveInt | None = Field(
        None, description="a seeded random sample of this many articles as the corpus (small runs); None: all of them. "
                          "FanOutQA keeps the leaves whose page is in the sample, so nothing is chosen by label"
    )
