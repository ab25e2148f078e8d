"""The report's HTML: the cohort page and one page per slide. Both are static files that load the package's
assets by relative links (``assets/``), so the same pages work from ``file://`` and from ``wsi-pipeline view``."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ._charts import confusion_html, labelled, reliability_svg, roc_svg

__all__ = ["index_page", "slide_page", "page_href", "STAMP_PREFIX"]

STAMP_PREFIX = "<!-- wsi-pipeline report "  # first line of every page: what it was made from (see _report)


def page_href(slide_id: str) -> str:
    """The slide page's address relative to the report's root (``slides/<id>.html``, URL-quoted)."""
    return f"slides/{quote(slide_id, safe='')}.html"


def _json_script(element_id: str, data: Any) -> str:
    # "</" cannot end the script early; the data is read with JSON.parse, never evaluated.
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _head(title: str, assets: str, stamp: str, extra: str = "") -> str:
    return (
        f'{STAMP_PREFIX}{stamp} -->\n<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # no network: everything comes from this folder (file:) or the view server (self)
        '<meta http-equiv="Content-Security-Policy" content="default-src \'self\' file: data:; '
        "img-src 'self' file: data: blob:; style-src 'self' file: 'unsafe-inline'\">"
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{assets}/report.css">{extra}</head>'
    )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _cells(row: dict[str, Any], classes: Sequence[str], has_loc: bool) -> str:
    label = row.get("label") or ""
    verdict = "" if not label else ("right" if label == row["predicted_class"] else "wrong")
    sid = html.escape(row["slide_id"])
    name = f'<a href="{page_href(row["slide_id"])}">{sid}</a>' if row.get("page") else sid
    probs = "".join(
        f'<td data-value="{row["probabilities"][c]:.6f}">{row["probabilities"][c]:.3f}</td>' for c in classes
    )
    loc = ""
    if has_loc:
        value = (row.get("localisation") or {}).get("loc_auc")
        loc = f'<td data-value="{value:.6f}">{value:.3f}</td>' if isinstance(value, (int, float)) else "<td></td>"
    folds = " ".join(str(k) for k in row.get("folds") or [])
    return (
        f'<tr data-slide="{sid}"><td>{name}</td><td>{html.escape(label)}</td>'
        f"<td>{html.escape(row['predicted_class'])}</td>{probs}"
        f'<td class="{verdict}">{verdict}</td><td>{html.escape(row.get("source") or "")}</td>'
        f"<td>{html.escape(folds)}</td><td>{row.get('n_tiles', '')}</td>{loc}</tr>"
    )


def index_page(
    rows: Sequence[dict[str, Any]], classes: Sequence[str], provenance: dict[str, str], *, stamp: str, assets: str
) -> str:
    """The cohort page: one sortable, filterable row per slide, the labelled slides' ROC, confusion matrix and
    reliability diagram, and the run's provenance."""
    has_loc = any((r.get("localisation") or {}).get("loc_auc") is not None for r in rows)
    heads = ["slide", "label", "prediction", *[f"p({c})" for c in classes], "right/wrong", "source", "folds", "tiles"]
    heads += ["localisation AUC"] if has_loc else []
    numeric = {f"p({c})" for c in classes} | {"tiles", "localisation AUC"}
    header = "".join(
        f'<th data-type="{"number" if h in numeric else "text"}"><button type="button">{html.escape(h)}</button></th>'
        for h in heads
    )
    body = "".join(_cells(r, classes, has_loc) for r in rows)
    held_out = labelled(rows, classes)
    charts = roc_svg(held_out, classes) + confusion_html(held_out, classes) + reliability_svg(held_out, len(classes))
    if held_out:
        right = sum(r["label"] == r["predicted_class"] for r in held_out)
        summary = f"{len(held_out)} labelled slide(s) never trained on: {right} right ({_pct(right / len(held_out))})"
    else:
        summary = "no labelled slide that the model never trained on: no ROC, confusion matrix or reliability"
    prov = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in provenance.items())
    return (
        _head(f"wsi-pipeline report: {provenance.get('model', '')}", assets, stamp)
        + '<body class="cohort"><header><h1>Cohort report</h1>'
        f"<p>{len(rows)} slide(s) predicted by <code>{html.escape(provenance.get('run', ''))}</code></p></header>"
        f'<section class="charts"><p>{html.escape(summary)}</p><div class="figures">{charts}</div></section>'
        '<section><label>filter <input id="filter" type="search" placeholder="slide, label, class..."></label> '
        f'<span id="shown">{len(rows)} of {len(rows)}</span>'
        f'<table id="slides" class="slides"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></section>'
        f'<section class="provenance"><h2>Provenance</h2><dl>{prov}</dl></section>'
        f'<script src="{assets}/report.js"></script></body></html>\n'
    )


def slide_page(data: dict[str, Any], tile_source: dict[str, Any] | None, *, stamp: str, assets: str) -> str:
    """A slide's page: the deep-zoom viewer with its layers, the prediction and the top tiles (``report.js`` builds
    them from the embedded JSON)."""
    sid = html.escape(data["slide_id"])
    probs = "".join(
        f'<li><span class="bar" style="width:{_pct(p)}"></span>{html.escape(c)} {p:.3f}</li>'
        for c, p in data["probabilities"].items()
    )
    label = data.get("label")
    verdict = ""
    if label:
        ok = label == data["predicted_class"]
        word = "right" if ok else "wrong"
        verdict = f' <span class="{word}">{word} (label {html.escape(label)})</span>'
    how = html.escape(f"{data.get('source') or ''} {' '.join(map(str, data.get('folds') or []))}".strip())
    osd = f'<script src="{assets}/openseadragon/openseadragon.min.js"></script>' if tile_source else ""
    page = {**data, "tile_source": tile_source, "osd_images": f"{assets}/openseadragon/images/"}
    return (
        _head(f"{data['slide_id']}: {data['predicted_class']}", assets, stamp)
        + '<body class="slide"><header><a href="../index.html">&larr; cohort</a>'
        f"<h1>{sid}</h1><p><b>{html.escape(data['predicted_class'])}</b>{verdict}"
        f' <span class="how">{how}</span></p><ul class="probs">{probs}</ul></header>'
        '<main><div id="viewer" class="viewer"></div><aside id="panel"></aside></main>'
        f'{_json_script("slide-data", page)}{osd}<script src="{assets}/report.js"></script></body></html>\n'
    )
