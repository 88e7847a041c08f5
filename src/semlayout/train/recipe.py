"""The fine-tune recipe as configuration (no torch here: the loop's config holds it).

`AdaptConfig` is what `semlayout.train.adaptation.adapt` runs; its defaults are the recipe
docs/adaptation.md measured and kept. `REVIEWED_SPLIT` is how the loop splits reviewed pairs
(by content, `write_shards(..., split_by="content")`): train for the fine-tune, val for early
stopping and the learning curve, test for the gate.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from semlayout.directions import DIRECTIONS, Direction
from semlayout.errors import validation_error
from semlayout.profiles import PROFILE_PATTERN

REVIEWED_SPLIT = {"val": 0.15, "test": 0.25}


class AdaptConfig(BaseModel):
    """The fine-tune recipe (defaults: the recipe docs/adaptation.md measured and kept)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=400, ge=1, description="the most steps a fine-tune runs")
    lr: float = Field(default=2e-4, gt=0, description="Adam learning rate (G and D), constant")
    batch_size: int = Field(default=4, ge=1)
    crop_size: int | None = Field(
        default=128, description="random crops of the 256 px network input"
    )
    replay_fraction: float = Field(default=0.5, ge=0, lt=1, description="share of original pairs")
    freeze: Literal["none", "encoder", "norm"] = "none"
    directions: list[Direction] = Field(
        default_factory=lambda: list(DIRECTIONS),
        min_length=1,
        description="the generators that adapt; the others keep the champion's weights and "
        "statistics (Layout->SEM of a new tool fights the original one without a tool input)",
    )
    ema_decay: float = Field(default=0.99, ge=0, lt=1, description="EMA of G's weights; 0 = off")
    l2sp: float = Field(
        default=0.0, ge=0, description="decoupled pull toward the champion's weights"
    )
    eval_every: int = Field(default=50, ge=1, description="steps between held-out evaluations")
    patience: int = Field(default=0, ge=0, description="evaluations without a gain before stopping")
    forget_budget: float | None = Field(
        default=0.01,
        ge=0,
        description="keep only weights whose original-val SSIM is at most this far below the "
        "champion's in each direction; None = judge on the reviewed pairs alone",
    )
    eval_pairs: int = Field(default=16, ge=1, description="at most this many pairs per evaluation")
    profile: str | None = Field(
        default=None,
        pattern=PROFILE_PATTERN,
        description="the tool / layer profile the reviewed pairs come from: only that "
        "profile's conditioning rows train (the shared network and every other profile keep "
        "the champion's weights exactly); None: the shared network adapts",
    )
    adapter_rank: int = Field(
        default=0,
        ge=0,
        le=64,
        description="with a profile: the rank of its residual 1x1 adapter after every decoder "
        "block (trained with its FiLM rows; 0 = FiLM rows only). A champion that already has "
        "adapters keeps its rank",
    )
    seed: int = 0


def adapt_config(values: dict[str, Any] | None = None) -> AdaptConfig:
    """An `AdaptConfig` from a mapping; a bad key or value is one `SemlayoutError` line."""
    try:
        return AdaptConfig.model_validate(values or {})
    except ValidationError as err:
        raise validation_error(err, "adaptation config") from None
