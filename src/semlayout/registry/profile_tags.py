"""What a registered version was adapted to (issue 21): the tool / layer profiles it learned,
the profile its fine-tune adapted, the contrast polarities it learned, and per-profile metrics
(the fine-tune evaluation's scores on the reviewed pairs' test split, translated with that
profile, beside the champion's on the same pairs) — as model-version tags:

```
profiles                                   "tool-b,M1"   (every profile the weights carry)
polarities                                 "+1,-1"       (`run_logging.TAG_POLARITIES`)
adapted_profile                            "tool-b"      (this fine-tune's; absent otherwise)
profile.tool-b.n_pairs                     "10"
profile.tool-b.sem2layout.iou              "0.7140"      (this version, with the profile)
profile.tool-b.champion.sem2layout.iou     "0.6790"      (the champion, same pairs)
```
No MLflow calls here: `Registry.register` sets them, `version_summary` reads them back.
"""

from __future__ import annotations

from typing import Any

from semlayout.directions import DIRECTIONS
from semlayout.profiles import check_profile

TAG_PROFILES = "profiles"
TAG_ADAPTED = "adapted_profile"
PREFIX = "profile."
METRICS = ("iou", "ssim", "ssim_vs_clean", "l1", "psnr")


def profiles_tag(cfg_dict: dict[str, Any]) -> str:
    """The `profiles` tag of a checkpoint config (a dict): its learned profiles, comma
    separated ("" for none)."""
    return ",".join(str(p) for p in (cfg_dict.get("generator") or {}).get("profiles") or [])


def _scores(metrics: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in DIRECTIONS:
        block = (metrics or {}).get(d) or {}
        for key in METRICS:
            value = block.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{d}.{key}"] = float(value)
    return out


def profile_record(
    profile: str, new: dict[str, Any], new_champion: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A fine-tune's record of its profile (the evaluation's new-pairs metrics, with the
    profile, and the champion's on the same pairs): what `profile_tags` turns into tags."""
    return {
        "name": check_profile(profile),
        "n_pairs": new.get("n_pairs") or new.get("n"),
        "metrics": _scores(new),
        "champion_metrics": _scores(new_champion),
    }


def profile_tags(record: dict[str, Any] | None) -> dict[str, str]:
    """The version tags of a `profile_record` ({} without one)."""
    if not record:
        return {}
    name = check_profile(str(record["name"]))
    tags = {TAG_ADAPTED: name}
    if record.get("n_pairs") is not None:
        tags[f"{PREFIX}{name}.n_pairs"] = str(int(record["n_pairs"]))
    for key, value in (record.get("metrics") or {}).items():
        tags[f"{PREFIX}{name}.{key}"] = f"{float(value):.4f}"
    for key, value in (record.get("champion_metrics") or {}).items():
        tags[f"{PREFIX}{name}.champion.{key}"] = f"{float(value):.4f}"
    return tags


def read_adaptation(tags: dict[str, str]) -> dict[str, Any]:
    """What a version's tags say it was adapted to: {"polarities", "profiles",
    "adapted_profile", "profile_metrics": {profile: {"n_pairs", "metrics", "champion"}}}."""
    learned = [p for p in tags.get(TAG_PROFILES, "").split(",") if p]
    names = sorted({*learned, *([tags[TAG_ADAPTED]] if TAG_ADAPTED in tags else [])}, key=len)
    per: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():  # a label may hold dots: matched against the known names
        name = next((n for n in reversed(names) if key.startswith(f"{PREFIX}{n}.")), None)
        if name is None:
            continue
        rest = key[len(PREFIX) + len(name) + 1 :]
        block = per.setdefault(name, {"n_pairs": None, "metrics": {}, "champion": {}})
        if rest == "n_pairs":
            block["n_pairs"] = int(value)
        elif rest.startswith("champion."):
            block["champion"][rest[len("champion.") :]] = float(value)
        else:
            block["metrics"][rest] = float(value)
    return {
        "polarities": [p for p in tags.get("polarities", "").split(",") if p],
        "profiles": learned,
        "adapted_profile": tags.get(TAG_ADAPTED),
        "profile_metrics": per,
    }
