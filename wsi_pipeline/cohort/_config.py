"""Settings of a generated lesion cohort (``wsi-pipeline lesion-cohort``); mirrored by ``configs/cohort.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CohortConfig", "KNOWN_SOURCE_MPP"]

# Sources whose files carry no resolution but whose resolution is known, by the file's sha256. The tiatoolbox
# carcinoma image (tiatoolbox 2.1.3, tiatoolbox/data/target_image.png): nuclei of ~10-15 um span ~40-60 px, ~0.25 um/px.
KNOWN_SOURCE_MPP = {"23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c": 0.25}


@dataclass
class CohortConfig:
    """How a cohort of slides with known lesions is made from real H&E.

    Attributes
    ----------
    slides
        Number of slides.
    positive_fraction
        Share of slides with lesions (label ``tumor``); the others are ``normal``.
    width, height
        Level-0 size of each slide in pixels.
    mpp
        Microns per pixel of level 0 (written into the slide, read back by OpenSlide).
    pieces
        ``[min, max]`` tissue pieces per slide.
    tissue_cover
        Share of the slide the pieces aim to cover together (the rest is glass).
    lesions
        ``[min, max]`` lesions per positive slide.
    lesion_share
        ``[min, max]`` of the total lesion area as a share of the slide's tissue, drawn log-uniformly per slide
        (0.002 is micro-metastasis scale on these slides, 0.1 a large region).
    stain_match
        ``none``, ``reinhard`` or ``macenko``: match the lesion tissue's staining to the background's.
    background, lesion
        Source files (any slide OpenSlide opens, or a flat TIFF/PNG/JPEG image).
    background_mpp, lesion_mpp
        Their resolution where the file has none (files listed in ``KNOWN_SOURCE_MPP`` need none).
    seed
        Fixes every slide: the same seed and sources give the same bytes.
    jpeg_quality
        JPEG quality of the slide tiles.
    """

    slides: int = 32
    positive_fraction: float = 0.5
    width: int = 4096
    height: int = 3072
    mpp: float = 0.5
    pieces: tuple[int, int] = (3, 5)
    tissue_cover: float = 0.45
    lesions: tuple[int, int] = (1, 3)
    lesion_share: tuple[float, float] = (0.02, 0.1)
    stain_match: Literal["none", "reinhard", "macenko"] = "none"
    background: str = "example/slides/CMU-1-Small-Region.svs"
    lesion: str = "example/images/tiatoolbox-target_image.png"
    background_mpp: float | None = None
    lesion_mpp: float | None = None
    seed: int = 0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        self.pieces = (int(self.pieces[0]), int(self.pieces[1]))
        self.lesions = (int(self.lesions[0]), int(self.lesions[1]))
        self.lesion_share = (float(self.lesion_share[0]), float(self.lesion_share[1]))
        problems = []
        if self.slides < 1:
            problems.append(f"slides {self.slides}: need at least 1")
        if not 0 <= self.positive_fraction <= 1:
            problems.append(f"positive_fraction {self.positive_fraction}: must be in [0, 1]")
        if min(self.width, self.height) < 512:
            problems.append(f"size {self.width}x{self.height}: each side must be at least 512 px")
        if self.width * self.height > 400_000_000:
            problems.append(f"size {self.width}x{self.height}: at most 400 megapixels (a slide is composed in memory)")
        if not 0.05 <= self.mpp <= 20:
            problems.append(f"mpp {self.mpp}: expected 0.05-20 um/px")
        if not 1 <= self.pieces[0] <= self.pieces[1]:
            problems.append(f"pieces {list(self.pieces)}: expected 1 <= min <= max")
        if not 0.05 <= self.tissue_cover <= 0.8:
            problems.append(f"tissue_cover {self.tissue_cover}: expected 0.05-0.8")
        if not 1 <= self.lesions[0] <= self.lesions[1]:
            problems.append(f"lesions {list(self.lesions)}: expected 1 <= min <= max")
        if not 0 < self.lesion_share[0] <= self.lesion_share[1] <= 0.5:
            problems.append(f"lesion_share {list(self.lesion_share)}: expected 0 < min <= max <= 0.5")
        if self.stain_match not in ("none", "reinhard", "macenko"):
            problems.append(f"stain_match {self.stain_match!r}: expected none, reinhard or macenko")
        if problems:
            from ..errors import ConfigError

            raise ConfigError("lesion-cohort: " + "; ".join(problems))
