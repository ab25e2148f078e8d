/* wsi-pipeline report: the cohort table (sort, filter) and the slide viewer (OpenSeadragon, canvas drawer, with
   an inline tile source: nothing is fetched but the page's own files). Plain ES5, no build step. */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function times(value) {
    if (value >= 10) return value.toFixed(0) + "\u00d7";
    if (value >= 1) return value.toFixed(2) + "\u00d7";
    return value.toPrecision(2) + "\u00d7";
  }

  // ------------------------------------------------------------------------------------------- cohort page
  function cohort(table) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var filter = document.getElementById("filter");
    var shown = document.getElementById("shown");
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (th, column) {
      th.querySelector("button").addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var numeric = th.getAttribute("data-type") === "number";
        var key = function (row) {
          var cell = row.cells[column];
          if (numeric) {
            var v = parseFloat(cell.getAttribute("data-value") || cell.textContent);
            return isNaN(v) ? -Infinity : v;
          }
          return cell.textContent.toLowerCase();
        };
        rows.sort(function (a, b) {
          var ka = key(a), kb = key(b);
          return (ka < kb ? -1 : ka > kb ? 1 : 0) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    filter.addEventListener("input", function () {
      var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      var n = 0;
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
        row.hidden = !keep;
        n += keep ? 1 : 0;
      });
      shown.textContent = n + " of " + rows.length;
    });
  }

  // ------------------------------------------------------------------------------------------- slide page
  var TISSUE = "rgba(20,140,20,0.9)", ANNOTATION = "rgba(255,190,0,0.95)";
  function slidePage(data) {
    var report = (window.report = { data: data, loadedLevels: {}, maxLoadedLevel: -1, ready: false });
    var panel = document.getElementById("panel");
    var width0 = data.level0[0];
    var layers = el("section", { class: "layers" }, [el("h2", { text: "Layers" })]);
    panel.appendChild(layers);

    function checkbox(id, text, checked, colour) {
      var box = el("input", { type: "checkbox", id: id });
      box.checked = checked;
      var swatch = colour ? el("span", { class: "swatch", style: "border-color:" + colour }) : null;
      layers.appendChild(el("label", { class: "layer" }, [box, swatch, document.createTextNode(" " + text)]));
      return box;
    }

    var attentionBox = null, opacity = null;
    if (data.overlay) {
      attentionBox = checkbox("layer-attention", "attention", true);
      opacity = el("input", { type: "range", id: "opacity", min: "0", max: "100", value: "50" });
      layers.appendChild(el("label", { class: "opacity" }, [document.createTextNode("opacity "), opacity]));
      var bar = el("div", { class: "colour-bar", style: "background:" + data.colour_bar.gradient });
      var ticks = el("div", { class: "ticks" });
      data.colour_bar.ticks.forEach(function (tick) {
        ticks.appendChild(el("span", { style: "left:" + (100 * tick[0]).toFixed(1) + "%", text: tick[1] }));
      });
      var a = data.attention;
      var stats = "max " + times(a.max_relative) + " uniform, min " + times(a.min_relative) + " (" +
        data.n_tiles + " tiles)";
      layers.appendChild(el("div", { class: "scale" }, [
        el("p", { text: "attention \u00d7 N (1 = uniform, log scale)" }), bar, ticks,
        el("p", { class: "stats", text: stats }),
        a.nearly_uniform ? el("p", { class: "note", id: "uniform-note", text: "attention nearly uniform" }) : null
      ]));
    } else if (data.overlay_note) {
      layers.appendChild(el("p", { class: "note", text: "no attention overlay: " + data.overlay_note }));
    }
    if (data.resolution_note) layers.appendChild(el("p", { class: "stats", id: "resolution", text: data.resolution_note }));
    var tissueBox = data.tissue.length ? checkbox("layer-tissue", "tissue outline", true, TISSUE) : null;
    var annotationBox = data.annotations.length ? checkbox("layer-annotations", "annotations", true, ANNOTATION) : null;

    var gallery = null;
    if (data.top_tiles.length) {
      gallery = el("section", { class: "top-tiles" }, [el("h2", { text: "Top tiles" })]);
      panel.appendChild(gallery);
    }

    if (!data.tile_source || !window.OpenSeadragon) {
      document.getElementById("viewer").appendChild(
        el("p", { class: "note", text: data.viewer_note || "no slide pixels for this slide" }));
      return;
    }

    var viewer = (report.viewer = window.OpenSeadragon({
      element: document.getElementById("viewer"),
      prefixUrl: data.osd_images,
      tileSources: data.tile_source,
      drawer: "canvas", // the WebGL drawer refuses tiles from file://
      crossOriginPolicy: false,
      loadTilesWithAjax: false,
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.5,
      animationTime: 0.6
    }));

    // level-0 pixels -> viewport units: the slide image is 1 unit wide whatever size its pyramid is capped at
    function toPoint(x, y) { return new window.OpenSeadragon.Point(x / width0, y / width0); }
    report.toPixel = function (x, y) {
      var p = viewer.viewport.pixelFromPoint(toPoint(x, y), true);
      return [p.x, p.y];
    };

    var outlines = el("canvas", { class: "outlines" });
    viewer.canvas.appendChild(outlines);
    var highlight = null;

    function rings(ctx, list, origin, scale) {
      list.forEach(function (ring) {
        ctx.beginPath();
        for (var i = 0; i + 1 < ring.length; i += 2) {
          var px = origin.x + (ring[i] / width0) * scale, py = origin.y + (ring[i + 1] / width0) * scale;
          if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        }
        ctx.closePath();
        ctx.stroke();
      });
    }

    function redraw() {
      var size = viewer.viewport.getContainerSize();
      var ratio = window.devicePixelRatio || 1;
      outlines.width = Math.round(size.x * ratio);
      outlines.height = Math.round(size.y * ratio);
      outlines.style.width = size.x + "px";
      outlines.style.height = size.y + "px";
      var ctx = outlines.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      var origin = viewer.viewport.pixelFromPoint(new window.OpenSeadragon.Point(0, 0), true);
      var scale = viewer.viewport.pixelFromPoint(new window.OpenSeadragon.Point(1, 0), true).x - origin.x;
      ctx.lineWidth = 2;
      if (tissueBox && tissueBox.checked) { ctx.strokeStyle = TISSUE; rings(ctx, data.tissue, origin, scale); }
      if (annotationBox && annotationBox.checked) {
        ctx.strokeStyle = ANNOTATION;
        data.annotations.forEach(function (a) { rings(ctx, a.rings, origin, scale); });
      }
      if (highlight) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 3;
        var s = (highlight.size / width0) * scale;
        ctx.strokeRect(origin.x + (highlight.x / width0) * scale, origin.y + (highlight.y / width0) * scale, s, s);
      }
    }
    viewer.addHandler("update-viewport", redraw);
    viewer.addHandler("resize", redraw);
    [tissueBox, annotationBox].forEach(function (box) { if (box) box.addEventListener("change", redraw); });

    viewer.addHandler("tile-loaded", function (event) {
      if (event.tiledImage !== viewer.world.getItemAt(0)) return;
      var level = event.tile.level;
      report.loadedLevels[level] = (report.loadedLevels[level] || 0) + 1;
      report.maxLoadedLevel = Math.max(report.maxLoadedLevel, level);
    });

    viewer.addHandler("open", function () {
      if (!data.overlay) { report.ready = true; redraw(); return; }
      var o = data.overlay;
      viewer.addTiledImage({
        tileSource: { type: "image", url: o.png, buildPyramid: false },
        x: o.x / width0,
        y: o.y / width0,
        width: o.width / width0,
        opacity: 0.5,
        success: function (event) {
          var overlay = (report.overlay = event.item);
          function apply() { overlay.setOpacity(attentionBox.checked ? opacity.value / 100 : 0); }
          attentionBox.addEventListener("change", apply);
          opacity.addEventListener("input", apply);
          report.ready = true;
          redraw();
        },
        error: function (event) { console.warn("attention overlay not drawn: " + event.message); report.ready = true; }
      });
    });

    if (gallery) {
      data.top_tiles.forEach(function (tile) {
        var button = el("button", { type: "button", class: "tile", "data-rank": String(tile.rank),
          title: "tile at (" + tile.x + ", " + tile.y + "): click to fly there" }, [
          tile.img ? el("img", { src: tile.img, alt: "tile " + tile.rank, width: "96", height: "96" }) : null,
          el("span", { text: "#" + tile.rank + " " + times(tile.relative) })
        ]);
        button.addEventListener("click", function () {
          highlight = tile;
          var s = tile.size;
          viewer.viewport.fitBounds(new window.OpenSeadragon.Rect((tile.x - s) / width0, (tile.y - s) / width0,
            (3 * s) / width0, (3 * s) / width0));
          redraw();
        });
        gallery.appendChild(button);
      });
    }
  }

  var table = document.getElementById("slides");
  if (table) cohort(table);
  var slideData = document.getElementById("slide-data");
  if (slideData) slidePage(JSON.parse(slideData.textContent));
})();
