"""The options of `build_datasets` (build.py), apart from it so that reading them (the
`onegen data build` flags) does not import the builders, which import torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dev_fraction: float = Field(
        0.5, ge=0, le=1, description="share of FanOutQA questions in dev (by id hash); inverse-cloze rows are all train"
    )
    negatives: NonNegativeInt = Field(3, description="MiniLM hard negatives per FanOutQA hop (0: no MiniLM at all)")
    ict_limit: NonNegativeInt | None = Field(None, description="inverse-cloze examples; None: one per article")
    seed: int = Field(
        0, description="inverse-cloze sentence, negative and sample choice; the FanOutQA split does not depend on it"
    )
