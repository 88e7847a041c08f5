"""Tool / layer profiles: the label that says which tool imaged a SEM or which layer it shows.

A fab runs several SEM tools and many layers; one model serves them when its generators are
conditioned on a profile (`GeneratorConfig.profiles`: a per-profile scale and shift of every
block's features, zero = the shared network, `semlayout.models.unet.FiLM`; with
`GeneratorConfig.profile_adapter_rank` also a residual low-rank 1x1 conv after every decoder
block, `semlayout.models.unet.ProfileAdapter`, zero = the shared network). A fine-tune
on one profile's reviewed pairs learns only that profile's rows (`AdaptConfig.profile`), so
the shared network and every other profile answer exactly as before: no forgetting by
construction. A request without a profile, or with one the model has not learned, runs the
shared network (the answer says which was used).
"""

from __future__ import annotations

from semlayout.polarity_layer import LAYER_PATTERN, check_layer

PROFILE_PATTERN = LAYER_PATTERN  # a profile is named by the label requests carry (`layer`)
NONE = -1  # the index of "no profile": the shared network


def check_profile(label: str) -> str:
    """`label` if it is a valid profile name (the layer label's rule), else one
    `SemlayoutError` line."""
    return check_layer(label, "profile")


def profile_index(profiles: list[str], label: str | None) -> int:
    """The row of `label` among a model's `profiles`; `NONE` for no label or an unknown one."""
    if label is None:
        return NONE
    check_profile(label)
    return profiles.index(label) if label in profiles else NONE


def with_profile(profiles: list[str], label: str) -> list[str]:
    """`profiles` with `label` appended when it is new (existing rows keep their index)."""
    check_profile(label)
    return list(profiles) if label in profiles else [*profiles, label]
