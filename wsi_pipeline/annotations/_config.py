"""``AnnotateConfig``: the options of the ``annotate`` stage (``configs/annotate.yaml`` mirrors these defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AnnotateConfig"]


@dataclass
class AnnotateConfig:
    """Options of ``annotate_stores``/``annotate_store``; names are matched case-insensitively.

    Parameters
    ----------
    classes
        The tile classes, in order: a tile labelled k (>= 1) is in ``classes[k - 1]``; 0 is negative. Keep the same
        list for every slide of a data set so that k means the same class everywhere.
    aliases
        Annotation names (QuPath classes, ASAP groups) that mean one of ``classes``; the default maps CAMELYON16's
        tumour groups ``_0`` and ``_1``.
    exclude
        Names whose regions are painted negative over every class: holes and exclusions drawn as their own
        annotations (CAMELYON16's ``_2`` group, as the challenge's own mask conversion paints it last as 0).
    unknown
        Names whose regions are painted unknown over everything else (QuPath's ``Ignore*`` class): their tiles
        are -1 unless a class still reaches the threshold.
    skip
        Names whose annotations are not used at all (e.g. ``Tissue`` outlines). Any name in none of these lists is
        an error, so a misspelt class never turns tumour tiles into negatives silently.
    threshold
        A tile is class k when at least this share of its area lies in class k (after painting, see docs).
    negative_max
        A tile that reaches no class is negative (0) only when no class and no unknown region covers more than this
        share of it; partly annotated tiles in between are unknown (-1). Set it to ``threshold`` to call every tile
        below the threshold negative.
    samples
        Sample points per tile side (``samples^2`` per tile) used to measure the shares.
    """

    classes: list[str] = field(default_factory=lambda: ["tumor"])
    aliases: dict[str, str] = field(default_factory=lambda: {"_0": "tumor", "_1": "tumor"})
    exclude: list[str] = field(default_factory=lambda: ["_2"])
    unknown: list[str] = field(default_factory=lambda: ["Ignore*"])
    skip: list[str] = field(default_factory=list)
    threshold: float = 0.5
    negative_max: float = 0.0
    samples: int = 32

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("classes must name at least one class, e.g. [tumor]")
        keys = [name.casefold() for name in self.classes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"classes {self.classes} name a class twice")
        for alias, target in self.aliases.items():
            if target.casefold() not in keys:
                raise ValueError(f"aliases maps {alias!r} to {target!r}, which is not in classes {self.classes}")
        seen: dict[str, str] = {key: "classes" for key in keys}
        for role in ("aliases", "exclude", "unknown", "skip"):
            for name in getattr(self, role):
                previous = seen.setdefault(name.casefold(), role)
                if previous != role:
                    raise ValueError(f"{name!r} is in both {previous} and {role}; keep it in one")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 <= self.negative_max <= self.threshold:
            raise ValueError(f"negative_max must be in [0, threshold], got {self.negative_max}")
        if not 2 <= self.samples <= 1024:
            raise ValueError(f"samples must be in [2, 1024], got {self.samples}")
