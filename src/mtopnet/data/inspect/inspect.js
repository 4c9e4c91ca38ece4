/* mtopnet inspect: the page's script (plain JS, no library). Written by mtopnet.inspect.
 *
 * catalogue.js calls MTOP.catalogue(index); objects/ROW.js (injected as <script> when an
 * object is opened: fetch() of file:// URLs is blocked in Chromium, a script tag is not)
 * calls MTOP.object(ROW, record). Encodings are those of mtopnet.inspect.object_record.
 */
"use strict";
(function () {
  const PDF_LEVELS = 10000;
  const CACHE = 64;            // decoded objects kept in memory
  const ARM_COLOURS = ["#1f4e9c", "#2a7f3f", "#7a3d9a", "#0f7c8c", "#5a5a00", "#8c2f5a"];
  const $ = (id) => document.getElementById(id);
  const S = {
    index: null, order: [], filtered: [], sortKey: null, sortDir: 1, page: 0, pageSize: 100,
    current: -1, objects: new Map(), loading: new Set(), wmin: null, wmax: null,
    drawn: { spectrum: 0, model: 0, pdf: 0, lines: 0 }, vi: {}, viKey: null, drag: null,
  };

  // ------------------------------------------------------------------ small helpers
  function fmt(v, dec) {
    if (v === null || v === undefined) return "";
    if (dec < 0 || typeof v === "string") return String(v);
    return dec === 0 ? String(v) : Number(v).toFixed(dec);
  }
  function bitNames(v, bits) {
    if (!v) return "";
    const names = [];
    for (const [bit, name] of Object.entries(bits || {})) if (v & Number(bit)) names.push(name);
    return names.join(" ");
  }
  const zwarnNames = (v) => bitNames(v, S.index.zwarn_bits);          // ZWARN: mtopnet.columns.ZWarn
  const zinfoNames = (v) => bitNames(v, S.index.zwarn_info_bits);     // ZWARN_INFO: mtopnet.columns.ZInfo
  const BITS = { zwarn: zwarnNames, zwarn_info: zinfoNames };         // columns shown as bit names
  function isGalaxy(row) { const t = S.index.data.spectype; return !t || !t[row] || t[row] === "GALAXY"; }
  function typeText(row) {
    const d = S.index.data; return (d.spectype ? d.spectype[row] || "" : "") + (d.subtype && d.subtype[row] ? " " + d.subtype[row] : "");
  }
  function cellText(key, v, dec) { return BITS[key] ? (v ? BITS[key](v) || String(v) : "0") : fmt(v, dec); }
  function niceTicks(lo, hi, n) {
    const span = hi - lo; if (!(span > 0)) return [lo];
    const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const out = []; for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push(+t.toPrecision(12));
    return out;
  }
  function setupCanvas(cv) {
    const r = window.devicePixelRatio || 1, w = cv.clientWidth || 800, h = cv.clientHeight || 300;
    cv.width = Math.round(w * r); cv.height = Math.round(h * r);
    const ctx = cv.getContext("2d"); ctx.setTransform(r, 0, 0, r, 0, 0); ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }
  function percentile(sorted, q) { return sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.floor(q * (sorted.length - 1))))] : NaN; }
  function axes(ctx, box, xr, yr, xlabel, ylabel) {
    ctx.strokeStyle = "#444"; ctx.lineWidth = 1; ctx.strokeRect(box.x, box.y, box.w, box.h);
    ctx.fillStyle = "#222"; ctx.font = "12px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of niceTicks(xr[0], xr[1], Math.max(3, Math.floor(box.w / 90)))) {
      const x = box.x + (t - xr[0]) / (xr[1] - xr[0]) * box.w;
      ctx.beginPath(); ctx.moveTo(x, box.y + box.h); ctx.lineTo(x, box.y + box.h + 4); ctx.stroke();
      ctx.fillText(String(t), x, box.y + box.h + 6);
    }
    ctx.fillText(xlabel, box.x + box.w / 2, box.y + box.h + 22);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of niceTicks(yr[0], yr[1], Math.max(3, Math.floor(box.h / 45)))) {
      const y = box.y + box.h - (t - yr[0]) / (yr[1] - yr[0]) * box.h;
      ctx.beginPath(); ctx.moveTo(box.x - 4, y); ctx.lineTo(box.x, y); ctx.stroke();
      ctx.fillText(String(t), box.x - 6, y);
    }
    ctx.save(); ctx.translate(14, box.y + box.h / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
    ctx.fillText(ylabel, 0, 0); ctx.restore();
  }

  // ------------------------------------------------------------------ visual inspection
  function loadVI() {
    S.viKey = "mtopnet-vi:" + S.index.title + ":" + S.index.n;
    try { S.vi = JSON.parse(localStorage.getItem(S.viKey) || "{}") || {}; } catch (e) { S.vi = {}; }
  }
  function saveVI() {
    try { localStorage.setItem(S.viKey, JSON.stringify(S.vi)); } catch (e) { /* storage full or disabled */ }
    $("vi-status").textContent = Object.keys(S.vi).length + " inspected";
  }
  function csvField(s) { s = String(s === null || s === undefined ? "" : s); return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function viCsv() {
    const ids = S.index.data.id, lines = ["TARGETID,VI_Z,VI_QUALITY,VI_COMMENT"];
    for (let row = 0; row < S.index.n; row++) {
      const v = S.vi[ids[row]]; if (!v) continue;
      lines.push([ids[row], v.z === null || v.z === undefined ? "" : v.z, v.q === null || v.q === undefined ? "" : v.q, v.c || ""].map(csvField).join(","));
    }
    return lines.join("\n") + "\n";
  }
  function downloadVI() {
    const blob = new Blob([viCsv()], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = "vi-" + S.index.title.replace(/\.[^.]*$/, "") + ".csv";
    document.body.appendChild(a); a.click(); setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }
  function viOf(row) { return S.vi[S.index.data.id[row]] || null; }
  function setVI(row, field, value) {
    const id = S.index.data.id[row], v = S.vi[id] || { z: null, q: null, c: "" };
    v[field] = value; S.vi[id] = v; saveVI();
    if (field === "z") drawPdf();
  }
  function showVI(row) {
    const v = viOf(row) || {};
    $("vi-z").value = v.z === null || v.z === undefined ? "" : v.z;
    $("vi-comment").value = v.c || "";
    for (const r of document.querySelectorAll("input[name=viq]")) r.checked = v.q !== null && v.q !== undefined && Number(r.value) === v.q;
  }

  // ------------------------------------------------------------------ the table
  function applyFilters() {
    const d = S.index.data, n = S.index.n;
    const text = $("f-text").value.trim().toLowerCase();
    const zmin = parseFloat($("f-zmin").value), zmax = parseFloat($("f-zmax").value);
    const qmin = Number($("f-qop").value), zw0 = $("f-zwarn0").checked, vi = $("f-vi").value, type = $("f-type").value;
    const out = [];
    for (const row of S.order) {
      if (text && ![String(d.id[row]), zwarnNames(d.zwarn[row]), d.zwarn_info ? zinfoNames(d.zwarn_info[row]) : "", typeText(row)]
        .some((s) => s.toLowerCase().includes(text))) continue;
      if (type !== "any" && (type === "notgalaxy" ? isGalaxy(row) : !(d.spectype && d.spectype[row] === type))) continue;
      if (!isNaN(zmin) && !(d.z[row] >= zmin)) continue;
      if (!isNaN(zmax) && !(d.z[row] <= zmax)) continue;
      if (qmin && !(d.qop[row] >= qmin)) continue;
      if (zw0 && d.zwarn[row] !== 0) continue;
      if (vi !== "all" && (vi === "done") !== !!viOf(row)) continue;
      out.push(row);
    }
    S.filtered = out; S.page = 0; $("count").textContent = out.length + " of " + n + " objects";
    renderTable();
  }
  function sortBy(key) {
    S.sortDir = S.sortKey === key ? -S.sortDir : 1; S.sortKey = key;
    const col = key === "vi" ? null : S.index.data[key], dir = S.sortDir;
    const val = key === "vi" ? (r) => { const v = viOf(r); return v && v.q !== null ? v.q : null; } : (r) => col[r] === "" ? null : col[r];
    const rows = Array.from({ length: S.index.n }, (_, i) => i);
    rows.sort((a, b) => {
      const va = val(a), vb = val(b);
      if (va === null || va === undefined) return (vb === null || vb === undefined) ? a - b : 1;   // missing last
      if (vb === null || vb === undefined) return -1;
      if (va < vb) return -dir; if (va > vb) return dir; return a - b;
    });
    S.order = rows; applyFilters();
  }
  function renderHead() {
    const tr = document.createElement("tr");
    for (const c of S.index.columns.concat([{ key: "vi", label: "VI q" }])) {
      const th = document.createElement("th"); th.textContent = c.label; th.dataset.key = c.key;
      th.title = "sort by " + c.label; th.addEventListener("click", () => sortBy(c.key)); tr.appendChild(th);
    }
    $("table").tHead.replaceChildren(tr);
  }
  function renderTable() {
    const d = S.index.data, cols = S.index.columns, pages = Math.max(1, Math.ceil(S.filtered.length / S.pageSize));
    S.page = Math.min(Math.max(0, S.page), pages - 1);
    const rows = S.filtered.slice(S.page * S.pageSize, (S.page + 1) * S.pageSize), frag = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr"); tr.dataset.row = row;
      if (!S.index.has_spectrum[row]) { tr.className = "nospec"; tr.title = "no spectrum in the inputs"; }
      for (const c of cols) {
        const td = document.createElement("td"), v = d[c.key][row];
        td.textContent = cellText(c.key, v, c.decimals);
        if (BITS[c.key]) { td.className = "zwarn"; td.title = c.label + " = " + v; }
        else if (c.key === "spectype" && !isGalaxy(row)) { td.className = "text nongalaxy"; td.title = "not a galaxy: Z is not a galaxy redshift"; }
        else if (c.decimals < 0) td.className = "text";
        tr.appendChild(td);
      }
      const td = document.createElement("td"), v = viOf(row); td.textContent = v && v.q !== null ? v.q : ""; tr.appendChild(td);
      frag.appendChild(tr);
    }
    $("table").tBodies[0].replaceChildren(frag);
    $("pg-info").textContent = "page " + (S.page + 1) + " of " + pages;
    for (const th of $("table").tHead.querySelectorAll("th")) th.className = th.dataset.key === S.sortKey ? (S.sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
  }

  // ------------------------------------------------------------------ objects
  function decode(rec) {
    for (const arm of rec.arms) {
      const n = arm.flux.length, wave = new Float64Array(n); let q = arm.wave0;
      for (let i = 0; i < n; i++) { wave[i] = q / 1000; if (i < n - 1) q += arm.dwave[i]; }
      const un = (a) => a ? Float64Array.from(a, (v) => v === null ? NaN : v * arm.unit) : null;
      arm.w = wave; arm.f = un(arm.flux); arm.s = un(arm.sigma); arm.m = un(arm.model);
      delete arm.flux; delete arm.sigma; delete arm.model; delete arm.dwave;
      arm.ok = new Uint8Array(n).fill(1);
      for (const [a, b] of arm.masked) for (let i = a; i <= b; i++) arm.ok[i] = 0;
    }
    return rec;
  }
  function openObject(row) {
    S.current = row; S.wmin = S.wmax = null;
    $("table-view").hidden = true; $("object-view").hidden = false;
    const d = S.index.data;
    $("obj-title").textContent = "id " + d.id[row] + "  (row " + row + ", " + (S.filtered.indexOf(row) + 1) + " of " + S.filtered.length + " shown)";
    const props = [];
    const esc = (t) => String(t).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch]));
    for (const c of S.index.columns) {
      if (c.key === "id" || (c.key === "subtype" && !d.subtype[row])) continue;
      const v = d[c.key][row], text = cellText(c.key, v, c.decimals) + (BITS[c.key] && v ? " (" + v + ")" : "");
      const cls = c.key === "spectype" && !isGalaxy(row) ? " class='nongalaxy'" : "";
      props.push("<span data-key='" + c.key + "'" + cls + "><b>" + esc(c.label) + "</b> " + esc(text) + "</span>");
    }
    $("obj-props").innerHTML = props.join("");
    $("type-note").textContent = isGalaxy(row) ? "" : "SPECTYPE " + typeText(row) + ": the " + d.spectype[row] + " templates fit much better than a galaxy's; Z and QOP are not a galaxy redshift's.";
    $("obj-props").insertAdjacentHTML("beforeend", "<span id='fit-rchi2'></span>");
    showVI(row);
    if (location.hash.indexOf("selftest") < 0) history.replaceState(null, "", "#obj=" + row);
    if (S.objects.has(row)) { render(); return; }
    if (!S.index.has_spectrum[row]) { render(); return; }
    $("spec-note").textContent = "loading objects/" + row + ".js ...";
    if (S.loading.has(row)) return;
    S.loading.add(row);
    const s = document.createElement("script"); s.src = "objects/" + row + ".js";
    s.onerror = () => { S.loading.delete(row); if (S.current === row) $("spec-note").textContent = "could not load objects/" + row + ".js"; s.remove(); };
    s.onload = () => s.remove();
    document.head.appendChild(s);
  }
  function step(delta) {
    const i = S.filtered.indexOf(S.current), j = i + delta;
    if (i >= 0 && j >= 0 && j < S.filtered.length) openObject(S.filtered[j]);
  }
  function backToTable() {
    S.current = -1; $("object-view").hidden = true; $("table-view").hidden = false;
    history.replaceState(null, "", location.pathname + location.search); renderTable();
  }
  function render() {
    const rec = S.objects.get(S.current);
    $("spec-note").textContent = rec ? "" : "no spectrum for this object in the inputs given to mtopnet inspect";
    $("fit-rchi2") && ($("fit-rchi2").innerHTML = rec && rec.fit_rchi2 !== null && rec.fit_rchi2 !== undefined ? "<b>best-fit rchi2</b> " + rec.fit_rchi2 : "");
    drawSpectrum(); drawPdf();
  }

  // ------------------------------------------------------------------ the spectrum
  function smoothArm(arm, k) {
    const n = arm.f.length, f = new Float64Array(n).fill(NaN), s = new Float64Array(n).fill(NaN), h = (k - 1) >> 1;
    let sf = 0, ss = 0, c = 0;
    const add = (i, sign) => { if (i >= 0 && i < n && arm.ok[i] && isFinite(arm.f[i])) { sf += sign * arm.f[i]; ss += sign * (arm.s[i] * arm.s[i] || 0); c += sign; } };
    for (let i = 0; i < h; i++) add(i, 1);
    for (let i = 0; i < n; i++) {
      add(i + h, 1); add(i - h - 1, -1);
      if (arm.ok[i] && c > 0) { f[i] = sf / c; s[i] = Math.sqrt(Math.max(ss, 0)) / c; }
    }
    return { f, s };
  }
  function waveExtent(rec) {
    let lo = Infinity, hi = -Infinity;
    for (const a of rec.arms) if (a.w.length) { lo = Math.min(lo, a.w[0]); hi = Math.max(hi, a.w[a.w.length - 1]); }
    return [lo, hi];
  }
  function drawSpectrum(sel) {
    const cv = $("spectrum"), { ctx, w, h } = setupCanvas(cv), rec = S.objects.get(S.current);
    S.drawn.spectrum = 0; S.drawn.model = 0; S.drawn.lines = 0;
    if (!rec) return;
    const full = waveExtent(rec), xr = [S.wmin ?? full[0], S.wmax ?? full[1]];
    $("wmin").value = xr[0].toFixed(1); $("wmax").value = xr[1].toFixed(1);
    const k = Number($("smooth").value), showModel = $("show-model").checked, showNoise = $("show-noise").checked;
    const sm = rec.arms.map((a) => smoothArm(a, k));
    const vals = [];
    rec.arms.forEach((a, j) => { for (let i = 0; i < a.w.length; i++) if (a.w[i] >= xr[0] && a.w[i] <= xr[1]) { const v = sm[j].f[i]; if (isFinite(v)) vals.push(v); } });
    vals.sort((a, b) => a - b);
    let lo = percentile(vals, 0.005), hi = percentile(vals, 0.995);
    if (!isFinite(lo) || !isFinite(hi)) { lo = -1; hi = 1; }
    if (hi - lo <= 0) { hi = lo + 1; }
    const pad = 0.12 * (hi - lo), yr = [Math.min(lo - pad, 0 - pad * 0.2), hi + 2.2 * pad];
    const box = { x: 62, y: 28, w: w - 76, h: h - 70 };
    const X = (v) => box.x + (v - xr[0]) / (xr[1] - xr[0]) * box.w, Y = (v) => box.y + box.h - (Math.min(Math.max(v, yr[0] - 1e3 * (yr[1] - yr[0])), yr[1] + 1e3 * (yr[1] - yr[0])) - yr[0]) / (yr[1] - yr[0]) * box.h;
    ctx.save(); ctx.beginPath(); ctx.rect(box.x, box.y, box.w, box.h); ctx.clip();
    ctx.fillStyle = "rgba(120,120,120,0.22)";
    for (const a of rec.arms) for (const [i, j] of a.masked) {
      const x0 = X(a.w[Math.max(i - 0.5, 0) | 0]), x1 = X(a.w[j]);
      if (x1 >= box.x && x0 <= box.x + box.w) ctx.fillRect(x0, box.y, Math.max(x1 - x0, 1), box.h);
    }
    ctx.strokeStyle = "#bbb"; ctx.setLineDash([2, 3]); ctx.beginPath(); ctx.moveTo(box.x, Y(0)); ctx.lineTo(box.x + box.w, Y(0)); ctx.stroke(); ctx.setLineDash([]);
    rec.arms.forEach((a, j) => {
      const { f, s } = sm[j], colour = ARM_COLOURS[j % ARM_COLOURS.length];
      const i0 = Math.max(0, lowerBound(a.w, xr[0]) - 1), i1 = Math.min(a.w.length, lowerBound(a.w, xr[1]) + 1);
      if (showNoise) {
        ctx.fillStyle = colour + "30";
        let open = false;
        const flush = (from, to) => {
          ctx.beginPath(); ctx.moveTo(X(a.w[from]), Y(f[from] + s[from]));
          for (let i = from + 1; i <= to; i++) ctx.lineTo(X(a.w[i]), Y(f[i] + s[i]));
          for (let i = to; i >= from; i--) ctx.lineTo(X(a.w[i]), Y(f[i] - s[i]));
          ctx.closePath(); ctx.fill();
        };
        let start = -1;
        for (let i = i0; i <= i1; i++) {
          const good = i < i1 && isFinite(f[i]) && isFinite(s[i]);
          if (good && !open) { start = i; open = true; } else if (!good && open) { flush(start, i - 1); open = false; }
        }
      }
      ctx.strokeStyle = colour; ctx.lineWidth = 1; ctx.beginPath(); let pen = false;
      for (let i = i0; i < i1; i++) {
        if (!isFinite(f[i])) { pen = false; continue; }
        if (pen) ctx.lineTo(X(a.w[i]), Y(f[i])); else { ctx.moveTo(X(a.w[i]), Y(f[i])); pen = true; }
        S.drawn.spectrum++;
      }
      ctx.stroke();
      if (showModel && a.m) {
        ctx.strokeStyle = "#e0301e"; ctx.lineWidth = 1.3; ctx.beginPath(); pen = false;
        for (let i = i0; i < i1; i++) {
          if (!isFinite(a.m[i])) { pen = false; continue; }
          if (pen) ctx.lineTo(X(a.w[i]), Y(a.m[i])); else { ctx.moveTo(X(a.w[i]), Y(a.m[i])); pen = true; }
          S.drawn.model++;
        }
        ctx.stroke();
      }
    });
    const z = S.index.data.z[S.current], vi = viOf(S.current);
    if ($("show-lines").checked && isFinite(z)) drawLines(ctx, box, xr, z, "#1565c0", "#b35c00", true);
    if (vi && vi.z !== null && vi.z !== undefined && isFinite(vi.z) && Math.abs(vi.z - z) > 1e-4) drawLines(ctx, box, xr, vi.z, "#2e7d32", "#2e7d32", false);
    if (sel) { ctx.fillStyle = "rgba(21,101,192,0.15)"; ctx.fillRect(Math.min(sel[0], sel[1]), box.y, Math.abs(sel[1] - sel[0]), box.h); }
    ctx.restore();
    axes(ctx, box, xr, yr, "observed wavelength [\u00c5, vacuum]", "flux [1e-17 erg/s/cm\u00b2/\u00c5]");
    ctx.font = "12px sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "top"; let lx = box.x;
    const legend = rec.arms.map((a, j) => [a.name, ARM_COLOURS[j % ARM_COLOURS.length]]);
    if (showModel) legend.push(["best fit at z = " + z.toFixed(4), "#e0301e"]);
    if (vi && vi.z !== null && vi.z !== undefined && isFinite(vi.z)) legend.push(["VI z = " + Number(vi.z).toFixed(4), "#2e7d32"]);
    legend.push(["masked", "#999"]);
    for (const [name, colour] of legend) { ctx.fillStyle = colour; ctx.fillRect(lx, 8, 14, 3); ctx.fillStyle = "#222"; ctx.fillText(name, lx + 18, 3); lx += ctx.measureText(name).width + 34; }
    cv._box = box; cv._xr = xr;
  }
  function lowerBound(arr, v) { let lo = 0, hi = arr.length; while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] < v) lo = m + 1; else hi = m; } return lo; }
  function drawLines(ctx, box, xr, z, cEm, cAbs, labels) {
    ctx.font = "11px sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    let lastX = -1e9;
    for (const line of S.index.lines) {
      const wl = line.wave * (1 + z); if (wl < xr[0] || wl > xr[1]) continue;
      const x = box.x + (wl - xr[0]) / (xr[1] - xr[0]) * box.w, colour = line.kind === "emission" ? cEm : cAbs;
      ctx.strokeStyle = colour; ctx.globalAlpha = 0.55; ctx.setLineDash(labels ? [4, 3] : [1, 3]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x, box.y + (labels ? 62 : 0)); ctx.lineTo(x, box.y + box.h); ctx.stroke();
      ctx.setLineDash([]); ctx.globalAlpha = 1;
      if (labels) {
        S.drawn.lines++;
        if (x - lastX < 13) continue;
        ctx.save(); ctx.translate(x, box.y + 4); ctx.rotate(Math.PI / 2); ctx.fillStyle = colour; ctx.fillText(line.name, 0, 0); ctx.restore();
        lastX = x;
      }
    }
  }

  // ------------------------------------------------------------------ the PDF
  function drawPdf() {
    const cv = $("pdf"), note = $("pdf-note"), info = $("pdf-info"), rec = S.objects.get(S.current);
    S.drawn.pdf = 0;
    if (!S.index.zbins) {
      cv.hidden = true; info.textContent = "";
      note.textContent = "This catalogue has no PDF: write it with `mtopnet predict ... --pdf` to see the PDF here.";
      return;
    }
    cv.hidden = false;
    const { ctx, w, h } = setupCanvas(cv);
    if (!rec || !rec.pdf) { note.textContent = rec ? "no PDF for this object" : "no spectrum file for this object: PDF not loaded"; info.textContent = ""; return; }
    note.textContent = "";
    const zc = S.index.zbins, p = rec.pdf.p, full = $("pdf-full").checked;
    const xr = full ? [zc[0], zc[zc.length - 1]] : rec.pdf.zoom;
    let pmax = 0; for (let i = 0; i < zc.length; i++) if (zc[i] >= xr[0] && zc[i] <= xr[1]) pmax = Math.max(pmax, p[i] / PDF_LEVELS * rec.pdf.pmax);
    if (!(pmax > 0)) pmax = rec.pdf.pmax || 1;
    const yr = [0, pmax * 1.25], box = { x: 62, y: 10, w: w - 76, h: h - 52 };
    const X = (v) => box.x + (v - xr[0]) / (xr[1] - xr[0]) * box.w, Y = (v) => box.y + box.h - (v - yr[0]) / (yr[1] - yr[0]) * box.h;
    ctx.save(); ctx.beginPath(); ctx.rect(box.x, box.y, box.w, box.h); ctx.clip();
    const d = S.index.data, row = S.current;
    if (d.z_lo95 && d.z_hi95) { ctx.fillStyle = "rgba(21,101,192,0.08)"; ctx.fillRect(X(d.z_lo95[row]), box.y, X(d.z_hi95[row]) - X(d.z_lo95[row]), box.h); }
    ctx.strokeStyle = "#1b1b1b"; ctx.fillStyle = "rgba(40,40,40,0.12)"; ctx.lineWidth = 1.2; ctx.beginPath();
    const i0 = Math.max(0, lowerBound(zc, xr[0]) - 1), i1 = Math.min(zc.length, lowerBound(zc, xr[1]) + 1);
    ctx.moveTo(X(zc[i0]), Y(0));
    for (let i = i0; i < i1; i++) { ctx.lineTo(X(zc[i]), Y(p[i] / PDF_LEVELS * rec.pdf.pmax)); S.drawn.pdf++; }
    ctx.lineTo(X(zc[i1 - 1]), Y(0)); ctx.fill(); ctx.stroke();
    const mark = (z, colour, dash) => { ctx.strokeStyle = colour; ctx.setLineDash(dash); ctx.lineWidth = 1.5; ctx.beginPath(); ctx.moveTo(X(z), box.y); ctx.lineTo(X(z), box.y + box.h); ctx.stroke(); ctx.setLineDash([]); };
    mark(d.z[row], "#e0301e", [5, 3]);
    const vi = viOf(row); if (vi && vi.z !== null && vi.z !== undefined && isFinite(vi.z)) mark(Number(vi.z), "#2e7d32", []);
    ctx.font = "11px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    for (const [zp, mp] of rec.pdf.peaks) {
      let best = 0; for (let i = i0; i < i1; i++) if (Math.abs(zc[i] - zp) < 0.012) best = Math.max(best, p[i] / PDF_LEVELS * rec.pdf.pmax);
      ctx.fillStyle = "#1565c0"; ctx.beginPath(); ctx.arc(X(zp), Y(best), 3.5, 0, 2 * Math.PI); ctx.fill();
      ctx.fillText("z=" + zp.toFixed(4) + "  P=" + mp.toFixed(2), Math.min(Math.max(X(zp), box.x + 60), box.x + box.w - 60), Y(best) - 5);
    }
    ctx.restore();
    axes(ctx, box, xr, yr, "z", "p per bin");
    info.textContent = rec.pdf.peaks.length + " peak" + (rec.pdf.peaks.length === 1 ? "" : "s") + (full ? "" : "; zoomed on the peaks (95% interval shaded)") + "; dashed red: catalogue z" + (vi && vi.z !== null ? ", green: VI z" : "");
  }

  // ------------------------------------------------------------------ wiring
  function bind() {
    for (const id of ["f-text", "f-zmin", "f-zmax", "f-qop", "f-zwarn0", "f-vi", "f-type"]) $(id).addEventListener("input", applyFilters);
    $("f-type-box").hidden = !S.index.data.spectype;
    $("pg-prev").onclick = () => { S.page--; renderTable(); }; $("pg-next").onclick = () => { S.page++; renderTable(); };
    $("pg-first").onclick = () => { S.page = 0; renderTable(); }; $("pg-last").onclick = () => { S.page = 1e9; renderTable(); };
    $("pg-size").onchange = () => { S.pageSize = Number($("pg-size").value); renderTable(); };
    $("table").tBodies[0].addEventListener("click", (e) => { const tr = e.target.closest("tr"); if (tr) openObject(Number(tr.dataset.row)); });
    $("back").onclick = backToTable; $("prev").onclick = () => step(-1); $("next").onclick = () => step(1);
    for (const id of ["smooth", "show-model", "show-noise", "show-lines"]) $(id).addEventListener("input", () => drawSpectrum());
    $("pdf-full").addEventListener("input", drawPdf);
    const setRange = () => { const a = parseFloat($("wmin").value), b = parseFloat($("wmax").value); if (a < b) { S.wmin = a; S.wmax = b; drawSpectrum(); } };
    $("wmin").addEventListener("change", setRange); $("wmax").addEventListener("change", setRange);
    $("wreset").onclick = () => { S.wmin = S.wmax = null; drawSpectrum(); };
    const cv = $("spectrum"), toWave = (x) => cv._xr[0] + (x - cv._box.x) / cv._box.w * (cv._xr[1] - cv._xr[0]);
    cv.addEventListener("mousedown", (e) => { if (cv._box) S.drag = [e.offsetX, e.offsetX]; });
    cv.addEventListener("mousemove", (e) => { if (S.drag) { S.drag[1] = e.offsetX; drawSpectrum(S.drag); } });
    window.addEventListener("mouseup", () => {
      if (!S.drag) return; const [a, b] = S.drag; S.drag = null;
      if (Math.abs(b - a) > 4) { S.wmin = toWave(Math.min(a, b)); S.wmax = toWave(Math.max(a, b)); }
      drawSpectrum();
    });
    cv.addEventListener("dblclick", () => { S.wmin = S.wmax = null; drawSpectrum(); });
    $("vi-z").addEventListener("input", () => { const v = parseFloat($("vi-z").value); setVI(S.current, "z", isNaN(v) ? null : v); drawSpectrum(); });
    $("vi-usez").onclick = () => { $("vi-z").value = S.index.data.z[S.current]; $("vi-z").dispatchEvent(new Event("input")); };
    for (const r of document.querySelectorAll("input[name=viq]")) r.addEventListener("change", () => setVI(S.current, "q", Number(r.value)));
    $("vi-comment").addEventListener("input", () => setVI(S.current, "c", $("vi-comment").value));
    $("vi-clear").onclick = () => { delete S.vi[S.index.data.id[S.current]]; saveVI(); showVI(S.current); drawSpectrum(); drawPdf(); };
    $("vi-save").onclick = downloadVI;
    document.addEventListener("keydown", (e) => {
      if ($("object-view").hidden || /INPUT|TEXTAREA|SELECT/.test(e.target.tagName)) return;
      if (e.key === "n" || e.key === "ArrowRight") step(1);
      else if (e.key === "p" || e.key === "ArrowLeft") step(-1);
      else if (e.key === "Escape") backToTable();
      else if (/^[0-4]$/.test(e.key)) { setVI(S.current, "q", Number(e.key)); showVI(S.current); }
    });
    window.addEventListener("resize", () => { if (S.current >= 0) render(); });
  }

  window.MTOP = {
    catalogue(index) {
      S.index = index;
      document.title = "mtopnet inspect: " + index.title;
      $("title").textContent = index.title;
      $("summary").textContent = index.n + " objects" + (index.zbins ? "" : " (no PDF in this catalogue)") + "; mtopnet " + index.mtopnet_version + ", " + index.generated;
      loadVI(); saveVI(); bind(); renderHead();
      S.order = Array.from({ length: index.n }, (_, i) => i); applyFilters();
      const m = /#obj=(\d+)/.exec(location.hash); if (m && Number(m[1]) < index.n) openObject(Number(m[1]));
      if (location.hash.indexOf("selftest") >= 0) selftest();
    },
    object(row, rec) {
      S.loading.delete(row); S.objects.set(row, decode(rec));
      if (S.objects.size > CACHE) S.objects.delete(S.objects.keys().next().value);
      if (row === S.current) render();
    },
    viCsv, state: S,
  };

  // ------------------------------------------------------------------ self-test (URL ending in #selftest)
  const errors = [];
  window.addEventListener("error", (e) => errors.push("error: " + e.message + " at " + (e.filename || "").split("/").pop() + ":" + e.lineno));
  window.addEventListener("unhandledrejection", (e) => errors.push("unhandled rejection: " + e.reason));
  const consoleError = console.error.bind(console);
  console.error = (...a) => { errors.push("console.error: " + a.join(" ")); consoleError(...a); };
  function checkTypesAndInfo(check) {
    // SPECTYPE / SUBTYPE: a column, sortable, filterable; ZWARN_INFO: bit names in the table and
    // the object panel. Ends with the first row that is not GALAXY open (if there is one).
    const d = S.index.data, n = S.index.n, rows = Array.from({ length: n }, (_, i) => i);
    const headKeys = Array.from($("table").tHead.querySelectorAll("th")).map((th) => th.dataset.key);
    const pick = (value) => { $("f-type").value = value; $("f-type").dispatchEvent(new Event("input")); return S.filtered.length; };
    if (d.spectype) {
      check(headKeys.includes("spectype") && headKeys.includes("subtype") === !!d.subtype, "SPECTYPE/SUBTYPE columns: " + headKeys.join(","));
      check(!$("f-type-box").hidden, "SPECTYPE filter shown");
      const notGalaxy = rows.filter((r) => !isGalaxy(r));
      check(pick("notgalaxy") === notGalaxy.length, "SPECTYPE filter 'not GALAXY': " + S.filtered.length + " of " + notGalaxy.length);
      check(pick("GALAXY") === rows.filter((r) => d.spectype[r] === "GALAXY").length, "SPECTYPE filter GALAXY");
      for (const t of ["QSO", "STAR"]) check(pick(t) === rows.filter((r) => d.spectype[r] === t).length, "SPECTYPE filter " + t);
      pick("any");
      if (notGalaxy.length) {
        $("f-text").value = d.spectype[notGalaxy[0]].toLowerCase(); $("f-text").dispatchEvent(new Event("input"));
        check(S.filtered.includes(notGalaxy[0]), "text filter finds a SPECTYPE");
        $("f-text").value = ""; $("f-text").dispatchEvent(new Event("input"));
      }
      sortBy("spectype");
      const types = S.filtered.map((r) => d.spectype[r]).filter((v) => v);
      check(types.every((v, i) => i === 0 || types[i - 1] <= v), "sorting by SPECTYPE");
      pick("notgalaxy");
      const cells = $("table").tBodies[0].querySelectorAll("td.nongalaxy");
      check(cells.length === Math.min(notGalaxy.length, S.pageSize), "non-GALAXY rows marked in the table: " + cells.length);
      pick("any");
      if (notGalaxy.length) {
        openObject(notGalaxy[0]);
        const span = $("obj-props").querySelector("span[data-key=spectype]");
        check(!!span && span.classList.contains("nongalaxy") && span.textContent.includes(d.spectype[notGalaxy[0]]), "SPECTYPE in the object panel");
        check($("type-note").textContent.includes(d.spectype[notGalaxy[0]]), "the object says it is not a galaxy");
      }
    }
    if (d.zwarn_info) {
      check(headKeys.includes("zwarn_info"), "ZWARN_INFO column");
      const flagged = rows.filter((r) => d.zwarn_info[r]);
      for (const r of flagged) {
        const names = zinfoNames(d.zwarn_info[r]);
        check(names && !/^\d+$/.test(names), "ZWARN_INFO " + d.zwarn_info[r] + " decoded: " + names);
      }
      const body = $("table").tBodies[0], col = S.index.columns.findIndex((c) => c.key === "zwarn_info");
      for (const tr of body.rows) {
        const r = Number(tr.dataset.row), v = d.zwarn_info[r];
        check(tr.cells[col].textContent === (v ? zinfoNames(v) : "0"), "ZWARN_INFO cell of row " + r + ": " + tr.cells[col].textContent);
      }
      if (flagged.length) {
        const r = flagged.find((x) => !isGalaxy(x)) ?? flagged[0]; if (S.current !== r) openObject(r);
        const span = $("obj-props").querySelector("span[data-key=zwarn_info]");
        check(!!span && span.textContent.includes(zinfoNames(d.zwarn_info[r])), "ZWARN_INFO names in the object panel");
      }
    }
  }
  function selftest() {
    const fails = [], saved = localStorage.getItem(S.viKey), t0 = Date.now();
    const check = (ok, what) => { if (!ok) fails.push(what); };
    const finish = () => {
      if (saved === null) localStorage.removeItem(S.viKey); else localStorage.setItem(S.viKey, saved);
      S.vi = JSON.parse(saved || "{}"); saveVI(); showVI(S.current);
      const all = fails.concat(errors), el = $("selftest-result");
      el.hidden = false; el.className = all.length ? "fail" : "pass";
      el.textContent = all.length ? "SELFTEST FAIL: " + all.join("; ") : "SELFTEST PASS";
      el.dataset.drawn = JSON.stringify(S.drawn);
    };
    try {
      const body = $("table").tBodies[0];
      check(body.rows.length === Math.min(S.index.n, S.pageSize), "table shows " + body.rows.length + " rows");
      const zth = Array.from($("table").tHead.querySelectorAll("th")).find((th) => th.dataset.key === "z");
      zth.click();
      const zs = S.filtered.map((r) => S.index.data.z[r]).filter((v) => v !== null);
      check(zs.every((v, i) => i === 0 || zs[i - 1] <= v), "sorting by z");
      $("f-text").value = String(S.index.data.id[S.order[0]]); $("f-text").dispatchEvent(new Event("input"));
      check(S.filtered.length >= 1 && S.filtered.length <= S.index.n, "filter by id");
      $("f-text").value = ""; $("f-text").dispatchEvent(new Event("input"));
      const first = Array.from(body.rows).find((tr) => S.index.has_spectrum[Number(tr.dataset.row)]);
      check(!!first, "an object with a spectrum");
      if (!first) { finish(); return; }
      first.click();
    } catch (e) { fails.push("exception: " + e); finish(); return; }
    const wait = () => {
      if (!S.objects.has(S.current) && Date.now() - t0 < 8000) { setTimeout(wait, 50); return; }
      try {
        check(S.objects.has(S.current), "objects/" + S.current + ".js loaded");
        check(!$("object-view").hidden, "object view shown");
        check(S.drawn.spectrum > 0, "spectrum drawn");
        if (S.index.zbins) check(S.drawn.pdf > 0, "PDF drawn"); else check(/no PDF/.test($("pdf-note").textContent), "no-PDF note");
        $("vi-usez").click();
        document.querySelector("input[name=viq][value='4']").click();
        $("vi-comment").value = 'test, "quoted"'; $("vi-comment").dispatchEvent(new Event("input"));
        const csv = viCsv(), id = String(S.index.data.id[S.current]);
        check(csv.startsWith("TARGETID,VI_Z,VI_QUALITY,VI_COMMENT\n"), "VI CSV header");
        check(csv.indexOf(id + "," + S.index.data.z[S.current] + ",4,\"test, \"\"quoted\"\"\"") >= 0, "VI CSV row: " + csv);
        check(JSON.parse(localStorage.getItem(S.viKey))[id].q === 4, "VI kept in localStorage");
        checkTypesAndInfo(check);
      } catch (e) { fails.push("exception: " + e); }
      finish();
    };
    wait();
  }
})();
