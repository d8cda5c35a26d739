"""The part of each position scheme, by the scheme's ``kind`` (``encoder.config.SCHEMES``)."""

from __future__ import annotations

from encoder.config import EncoderConfig
from encoder.parts.disentangled import DisentangledPart
from encoder.parts.positions import AbsolutePart, RelativeBucketsPart, RotaryPart

PARTS: dict[str, type[AbsolutePart]] = {"absolute": AbsolutePart, "relative_buckets": RelativeBucketsPart,
                                        "rotary": RotaryPart, "disentangled": DisentangledPart}


def position_part(config: EncoderConfig) -> type[AbsolutePart]:
    """The part class of ``config.positions``."""
    return PARTS[config.positions.kind]
