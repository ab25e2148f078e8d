"""Generated slide cohorts with known lesions, from real H&E: a benchmark on slide pixels with ground truth.

``make_cohort(out_dir, CohortConfig(...))`` writes pyramidal slides of real normal tissue (by default the CMU skin
slide) arranged anew on each slide, positive slides with irregular lesions of real tumour tissue (by default the
tiatoolbox carcinoma image), ``labels.csv``, a QuPath GeoJSON of each positive slide's lesions and ``cohort.json``.
The CLI is ``wsi-pipeline lesion-cohort``.
"""

from ._compose import ComposedSlide, TissueSource, blob_polygon, compose_slide, lesion_masks, paint_lesions
from ._config import KNOWN_SOURCE_MPP, CohortConfig
from ._make import LESION_CLASS, RECORD, CohortResult, lesion_geojson, make_cohort, write_pyramid

__all__ = [
    "CohortConfig",
    "CohortResult",
    "ComposedSlide",
    "KNOWN_SOURCE_MPP",
    "LESION_CLASS",
    "RECORD",
    "TissueSource",
    "blob_polygon",
    "compose_slide",
    "lesion_geojson",
    "lesion_masks",
    "make_cohort",
    "paint_lesions",
    "write_pyramid",
]
