"""The pathologist's view: an offline, zoomable report of a prediction folder (``write_report``, which ``predict``
calls) and a local server of the same pages at full resolution (``serve``, ``wsi-pipeline view``)."""

from ._pyramid import DeepZoom, tile_source, write_pyramid
from ._report import REPORT_DIR, ReportConfig, ReportResult, load_results, report_provenance, static_dir, write_report
from ._server import ViewServer, make_server

__all__ = [
    "ReportConfig",
    "ReportResult",
    "write_report",
    "load_results",
    "report_provenance",
    "REPORT_DIR",
    "static_dir",
    "DeepZoom",
    "tile_source",
    "write_pyramid",
    "ViewServer",
    "make_server",
]
