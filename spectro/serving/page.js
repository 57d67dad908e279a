// The page of `spectro serve`: files in, one card per file with its verdict, spectrogram, score over time and
// class probabilities; the model's description beside them. Everything comes from this server's own API
// (api/model, and api/inspect: one upload per file for its verdict and its spectrogram); nothing is loaded from
// elsewhere. Text from the server is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  let model = null; // GET api/model, once loaded
  const modelReady = fetchJSON("api/model").then((m) => { model = m; showModel(m); showMachineChoice(m); return m; },
    (err) => { showModelError(err); return null; });

  // -- small DOM helpers --------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "style") Object.assign(node.style, value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : String(x));
  const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`);
  const seconds = (s) => `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;

  // -- talking to the server: every failure becomes one sentence ----------------------------------------
  async function request(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (err) {
      throw new Error("the server did not answer (is spectro serve still running?)");
    }
    if (!response.ok) {
      let text = `the server answered ${response.status} ${response.statusText}`.trim();
      try {
        const body = await response.json();
        if (body && typeof body.error === "string") text = body.error;
      } catch (err) { /* not JSON: keep the status line */ }
      throw new Error(text);
    }
    return response;
  }

  async function fetchJSON(url, options) {
    const response = await request(url, options);
    try {
      return await response.json();
    } catch (err) {
      throw new Error("the server's answer was not JSON");
    }
  }

  function formOf(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return form;
  }

  // -- the model panel ----------------------------------------------------------------------------------
  function table(rows) {
    return el("table", {}, el("tbody", {}, rows.filter((r) => r[1] !== null && r[1] !== undefined && r[1] !== "")
      .map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v)))));
  }

  function showModel(m) {
    const id = m.model;
    document.getElementById("identity").textContent = `${id.run} / ${id.file}`;
    const f = m.features;
    const abnormal = new Set(m.abnormal_classes);
    const thr = m.threshold || {};
    const thrText = `${fmt(thr.value)}, ${thr.method || "default"}${thr.max_fpr !== undefined ? `, max FPR ${thr.max_fpr}` : ""}`;
    const metricRows = Object.entries(m.test_metrics || {}).map(([k, v]) =>
      [k.replaceAll("_", " "), Number.isInteger(v) ? String(v) : fmt(v)]);
    const backbone = m.backbone || {};
    const body = el("div", {},
      table([
        ["run", id.run],
        ["file", `${id.file} (${id.format}${m.model.input_dtype ? `, ${m.model.input_dtype} input` : ""}, ${bytes(id.size_bytes)})`],
        ["sha256", id.sha256],
        ["trained", m.created ? m.created.replace("T", " ") : "unknown"],
        ["backbone", backbone.backbone ? `${backbone.backbone} α ${backbone.alpha}, ${backbone.image_size} px, weights ${backbone.weights_used}` : null],
        ["task", m.task],
        ["threshold", thrText],
      ]),
      el("h3", {}, "Machines"),
      el("div", { class: "chips" }, m.machines.map((x) => el("span", { class: "chip" }, x))),
      el("h3", {}, "Classes"),
      el("div", { class: "chips" }, m.classes.map((c) => el("span", { class: `chip ${abnormal.has(c) ? "abnormal" : "normal"}` }, c))),
      el("h3", {}, "Feature settings"),
      table([
        ["sample rate", `${f.sr} Hz, channel ${f.channel}`],
        ["FFT / hop", `${f.n_fft} / ${f.hop_length} samples`],
        ["mel bands", `${f.n_mels} (${f.fmin}–${f.fmax === null ? f.sr / 2 : f.fmax} Hz)`],
        ["dB range", `${f.db_min} … ${f.db_max} dB`],
        ["segments", f.segment_seconds ? `${f.segment_seconds} s, hop ${f.segment_hop_seconds || f.segment_seconds} s` : "whole recordings"],
        ["model input", `${m.input_shape[0]} × ${m.input_shape[1]} px (${seconds(m.window_seconds)} window)`],
      ]),
      el("h3", {}, "Test metrics"),
      metricRows.length ? table(metricRows) : el("p", { class: "muted" }, "none stored with this run"),
      m.test_metrics_source ? el("p", { class: "muted" }, `from ${m.test_metrics_source}`) : null,
      el("p", { class: "muted" }, `Uploads up to ${m.max_upload_mb} MB.`));
    document.getElementById("model-body").replaceChildren(body);
    document.getElementById("model-body").classList.remove("muted");
  }

  // the machine every upload is scored as (api/inspect?machine=, as classify's --machine), when the model takes one
  function showMachineChoice(m) {
    const choices = m.machine_choices || [];
    if (!choices.length) return;
    const select = document.getElementById("machine");
    select.append(...choices.map((c) => el("option", { value: c }, c)));
    document.getElementById("machine-choice").hidden = false;
  }

  // api/inspect answers api/classify's object for the file and its spectrogram, from one upload
  function inspectURL() {
    const select = document.getElementById("machine");
    return select && select.value ? `api/inspect?machine=${encodeURIComponent(select.value)}` : "api/inspect";
  }

  // the range a score is drawn in: [0, 1] for a probability, else one that holds 0, the threshold, twice a positive
  // threshold and every score of the file (a fused score, a log-odds or a standard score, and a normal-only one are
  // not probabilities, and their threshold can be below 0)
  function scoreRange(r) {
    const scores = [r.anomaly_score, ...(r.windows || []).map((w) => w.anomaly_score)];
    if (r.threshold >= 0 && r.threshold <= 1 && scores.every((s) => s >= 0 && s <= 1)) return [0, 1];
    const lo = Math.min(0, r.threshold, ...scores);
    const hi = Math.max(r.threshold > 0 ? 2 * r.threshold : 1, ...scores);
    return [lo, hi > lo ? hi : lo + 1];
  }

  // where a score sits on the gauge, 0…1: the threshold always in the middle, and one scale for every clip of a run,
  // so cards compare. A probability (a result without `scores`) and a normal-only run's distance (knn, mahalanobis,
  // id, modulation, melstats: 0 is a perfect match) fill the left half from 0 to the threshold and the right half from the
  // threshold to 1 (a probability) or to twice the threshold (a distance); a fused score or a normal-only `combined`
  // one (a log-odds or a standard score, of either sign) sits on ±max(4, 2 |threshold|) about the threshold. A
  // score past an end sits at that end.
  const DISTANCES = new Set(["knn", "mahalanobis", "id", "modulation", "melstats"]);
  function gaugeScale(r) {
    const t = r.threshold;
    const clamp = (v) => Math.max(0, Math.min(1, v));
    const top = r.scores === undefined ? 1 : DISTANCES.has(r.scorer) ? 2 * t : null;
    if (top !== null && t > 0 && t < top) return (s) => clamp(s < t ? 0.5 * s / t : 0.5 + 0.5 * (s - t) / (top - t));
    const half = Math.max(4, 2 * Math.abs(t));
    return (s) => clamp(0.5 + 0.5 * (s - t) / half);
  }

  function showModelError(err) {
    document.getElementById("model-body").replaceChildren(
      el("p", { class: "error-text" }, `Could not load the model's description: ${err.message}`));
  }

  // -- one card per file --------------------------------------------------------------------------------
  async function addFile(file) {
    const status = el("p", { class: "status" }, "classifying…");
    const card = el("article", { class: "card", "data-state": "pending" },
      el("div", { class: "card-head" }, el("span", { class: "name" }, file.name), el("span", { class: "size" }, bytes(file.size))),
      status);
    document.getElementById("results").prepend(card);
    await modelReady;
    if (model && file.size > model.max_upload_mb * 1048576) {
      return showError(card, status, `${file.name}: ${bytes(file.size)} is over the server's upload limit of ${model.max_upload_mb} MB`);
    }
    let answer;
    try {
      answer = await fetchJSON(inspectURL(), { method: "POST", body: formOf(file) });
    } catch (err) {
      return showError(card, status, err.message);
    }
    const result = answer.result;
    status.remove();
    card.append(...describeResult(result));
    card.append(await spectrogramFigure(`data:image/png;base64,${answer.spectrogram}`, result));
    if (result.windows) card.append(timeline(result));
    card.append(probabilities(result));
    card.dataset.state = "done";
  }

  function showError(card, status, message) {
    status.remove();
    card.classList.add("error");
    card.append(el("p", { class: "error-text", role: "alert" }, `Could not classify this file: ${message}`));
    card.dataset.state = "error";
  }

  function describeResult(r) {
    const abnormal = r.verdict === "ABNORMAL";
    const unknown = r.known_machine && !r.known_machine.known;
    const head = el("div", { class: "card-head" },
      el("span", { class: `verdict ${abnormal ? "abnormal" : "normal"}` }, r.verdict),
      unknown ? el("span", { class: "verdict unknown", title: "unlike every machine the model was trained on or " +
        "enrolled with: the verdict says little" }, "UNKNOWN MACHINE") : null,
      el("span", {}, r.kind === "audio" ? "recording" : "spectrogram image"),
      r.windows ? el("span", { class: "muted" }, `score: maximum over ${r.windows.length} windows`) : null);
    const at = gaugeScale(r);
    const fill = el("div", { class: `fill${abnormal ? " over" : ""}`, style: { width: `${100 * at(r.anomaly_score)}%` } });
    const tick = el("div", { class: "tick", style: { left: `calc(${100 * at(r.threshold)}% - 1px)` }, title: "threshold" });
    const gauge = el("div", { class: "gauge", role: "img", "aria-label": `anomaly score ${fmt(r.anomaly_score)} ` +
      `${abnormal ? "at or over" : "under"} the threshold ${fmt(r.threshold)}` }, fill, tick);
    const facts = el("dl", { class: "facts" },
      el("dt", {}, "anomaly score"),
      el("dd", {}, el("span", { class: "score" }, fmt(r.anomaly_score)), ` (threshold ${fmt(r.threshold)})`, gauge,
        el("div", { class: "gauge-scale", "aria-hidden": "true" },
          el("span", {}, "normal"), el("span", {}, "threshold"), el("span", {}, "abnormal"))),
      el("dt", {}, "failure type"),
      el("dd", { class: "failure" }, r.failure_type || "none known to this model",
        abnormal ? "" : el("span", { class: "muted" }, " (the most likely failure, were it abnormal)")),
      el("dt", {}, "predicted"),
      el("dd", {}, r.predicted),
      r.machine ? el("dt", {}, "scored as") : null,
      r.machine ? el("dd", {}, `${r.machine} (${r.reference}; ${r.scorer} score)`) : null,
      r.machine_type ? el("dt", {}, "scored as") : null,
      r.machine_type ? el("dd", { class: "scored-as" }, `a ${r.machine_type} (from ${r.machine_type_from})`) : null,
      r.known_machine ? el("dt", {}, "known machine") : null,
      r.known_machine ? el("dd", { class: "known" }, r.known_machine.known ? `yes: nearest ${r.known_machine.nearest}` :
        `no: nearest ${r.known_machine.nearest} at ${fmt(r.known_machine.distance)}x the farthest of its own clips`) : null);
    return [head, facts];
  }

  // -- the spectrogram, coloured, with the windows over threshold marked --------------------------------
  const MAGMA = [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122], [229, 80, 100],
    [251, 135, 97], [254, 194, 135], [252, 253, 191]];
  const LUT = (() => {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let v = 0; v < 256; v++) {
      const x = (v / 255) * (MAGMA.length - 1);
      const i = Math.min(MAGMA.length - 2, Math.floor(x));
      const t = x - i;
      for (let c = 0; c < 3; c++) lut[3 * v + c] = MAGMA[i][c] + t * (MAGMA[i + 1][c] - MAGMA[i][c]);
    }
    return lut;
  })();

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the spectrogram image could not be decoded"));
      img.src = src;
    });
  }

  async function spectrogramFigure(src, r) {
    const caption = el("figcaption", {}, "log-mel spectrogram (low frequencies at the bottom)");
    let img;
    try {
      img = await loadImage(src);
    } catch (err) {
      return el("figure", {}, caption, el("p", { class: "error-text" }, `No spectrogram: ${err.message}`));
    }
    const canvas = el("canvas", { width: img.naturalWidth, height: img.naturalHeight, role: "img",
      "aria-label": `spectrogram of ${r.path}` });
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    for (let p = 0; p < data.data.length; p += 4) {
      const v = data.data[p];
      data.data[p] = LUT[3 * v]; data.data[p + 1] = LUT[3 * v + 1]; data.data[p + 2] = LUT[3 * v + 2]; data.data[p + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    const box = el("div", { class: "spectrogram" }, canvas);
    const f = model ? model.features : null;
    const duration = f ? (img.naturalWidth - 1) * f.hop_length / f.sr : null;
    let track = null;
    if (duration && r.windows) {
      // under the image, the spans of the windows whose score reached the threshold
      track = el("div", { class: "track", title: "windows over the threshold" });
      for (const w of r.windows.filter((w) => w.over_threshold)) {
        const left = Math.max(0, Math.min(1, w.start_s / duration));
        const right = Math.max(0, Math.min(1, w.end_s / duration));
        track.append(el("div", { class: "band", title: `window ${w.index}: ${seconds(w.start_s)}–${seconds(w.end_s)}, score ${fmt(w.anomaly_score)}`,
          style: { left: `${100 * left}%`, width: `${100 * (right - left)}%` } }));
      }
      caption.append("; the strip below marks in red the windows over the threshold");
    }
    return el("figure", {}, caption, box, track,
      duration ? el("div", { class: "axis" }, el("span", {}, "0 s"), el("span", {}, seconds(duration))) : null);
  }

  // -- the score over time of a long recording ----------------------------------------------------------
  function timeline(r) {
    const W = 640, H = 130, L = 30, R = 8, T = 8, B = 22;
    const end = r.windows[r.windows.length - 1].end_s || 1;
    const x = (t) => L + (W - L - R) * (t / end);
    const [lo, hi] = scoreRange(r);
    const y = (s) => T + (H - T - B) * (1 - (s - lo) / (hi - lo));
    const chart = svg("svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `anomaly score over time, ${r.windows.filter((w) => w.over_threshold).length} windows over the threshold` });
    chart.append(svg("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
    for (const w of r.windows.filter((w) => w.over_threshold)) {
      chart.append(svg("rect", { class: "over", x: x(w.start_s), y: T, width: Math.max(1, x(w.end_s) - x(w.start_s)), height: H - T - B }));
    }
    chart.append(svg("line", { class: "threshold", x1: L, x2: W - R, y1: y(r.threshold), y2: y(r.threshold) }));
    const points = r.windows.map((w) => [x((w.start_s + w.end_s) / 2), y(w.anomaly_score)]);
    // one dot per window, each seen: windows can nearly coincide (the last is aligned to the recording's end, often
    // a frame after the one before it), so a dot is moved right just enough to clear the one before, and the dots
    // are made smaller where a long recording has too many windows for the width
    const n = points.length;
    const radius = Math.min(3.2, (W - L - R) / (2.5 * n));
    const gap = 2 * radius + Math.min(1, radius / 2);
    for (let i = 1; i < n; i++) points[i][0] = Math.max(points[i][0], points[i - 1][0] + gap);
    points[n - 1][0] = Math.min(points[n - 1][0], W - R - radius);
    for (let i = n - 2; i >= 0; i--) points[i][0] = Math.min(points[i][0], points[i + 1][0] - gap);
    chart.append(svg("polyline", { class: "score", points: points.map((p) => p.join(",")).join(" ") }));
    r.windows.forEach((w, i) => {
      const dot = svg("circle", { cx: points[i][0], cy: points[i][1], r: radius, class: w.over_threshold ? "hit" : "" });
      dot.append(svg("title", {}, `${seconds(w.start_s)}–${seconds(w.end_s)}: ${fmt(w.anomaly_score)}`));
      chart.append(dot);
    });
    chart.append(svg("text", { x: 4, y: y(hi) + 4 }, fmt(hi, hi === 1 ? 0 : 1)), svg("text", { x: 4, y: y(lo) }, fmt(lo, lo === 0 ? 0 : 1)),
      svg("text", { x: L, y: H - 6 }, "0 s"), svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, seconds(end)),
      svg("text", { x: W - R - 4, y: y(r.threshold) - 4, "text-anchor": "end" }, `threshold ${fmt(r.threshold, 2)}`));
    const over = r.windows.filter((w) => w.over_threshold).length;
    return el("figure", {}, el("figcaption", {}, `anomaly score over time: ${over} of ${r.windows.length} windows over the threshold`), chart);
  }

  // -- class probabilities as bars ----------------------------------------------------------------------
  function probabilities(r) {
    const abnormal = new Set(model ? model.abnormal_classes : []);
    const rows = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
    const grid = el("div", { class: "probs" });
    rows.forEach(([c, p], i) => {
      grid.append(el("span", { class: i === 0 ? "top" : "" }, c),
        el("div", { class: "bar" }, el("span", { class: abnormal.has(c) ? "abnormal" : "", style: { width: `${100 * p}%` } })),
        el("span", { class: "value" }, fmt(p)));
    });
    const where = r.windows ? " (in the window with the highest anomaly score)" : "";
    return el("figure", {}, el("figcaption", {}, `class probabilities${where}; red: failure classes`), grid);
  }

  // -- choosing and dropping files ----------------------------------------------------------------------
  function addFiles(files) {
    for (const file of Array.from(files)) addFile(file);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const input = document.getElementById("files");
    const drop = document.getElementById("drop");
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const type of ["dragleave", "drop"]) {
      drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
    }
    drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    // a file dropped beside the zone would make the browser leave the page: take it too
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => { e.preventDefault(); if (!drop.contains(e.target)) addFiles(e.dataTransfer.files); });
  });
})();
