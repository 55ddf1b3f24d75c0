// Diagnostic DICOM viewer: DICOMweb metadata plus raw frames, windowed in the browser.
// Raw pixels (not server-rendered JPEGs) so window/level is exact and instant; colour images
// use the server's /rendered PNGs, or their JPEG frames as stored, which the browser decodes
// itself (a fraction of the bytes, and no decoding on the server). Contract: data-*
// attributes on #viewer and window.portalViewer are read by automated tests and benchmarks;
// keep them current.
(function () {
  "use strict";
  const T0 = performance.now();
  const $ = (id) => document.getElementById(id);
  const viewer = $("viewer");
  const canvas = $("viewer-canvas");
  if (!viewer || !canvas || !canvas.getContext || !window.fetch) return;
  const viewport = $("viewport");
  const slider = $("slice-slider");
  const presetSelect = $("preset");
  const message = $("viewer-message");
  const out = { series: $("series-status"), slice: $("slice-status"), wl: $("wl-status"),
    zoom: $("zoom-status"), measure: $("measure-status") };
  const cfg = {
    root: (viewer.dataset.wadoRoot || "").replace(/\/+$/, ""),
    study: viewer.dataset.studyUid || "",
    session: viewer.dataset.viewerSession || "",
  };
  const ctx = canvas.getContext("2d", { alpha: false });

  // Bone is 400/1800 (wide enough for cortical bone and metal-free implants); documented choice.
  const PRESETS = { brain: [40, 80], lung: [-600, 1500], bone: [400, 1800], abdomen: [40, 400] };
  const MAX_IN_FLIGHT = 6;
  const FRAME_BATCH = 16; // frames per request for multi-frame instances
  // Bytes per request, so a batch of large frames (breast tomosynthesis: 19 MiB a frame)
  // stays well within what the server decodes in one answer.
  const BATCH_BYTES = 64 * 1024 * 1024;
  const CACHE_BYTES = 600 * 1024 * 1024;
  const CINE_MS = 100; // ~10 frames/s
  const ENDED_TEXT = "Access to this study has ended. Reload the page or sign in again.";
  const IMAGE_ERROR_TEXT = "This image could not be loaded.";
  const SERIES_ERROR_TEXT = "This series could not be loaded.";
  const NO_IMAGES_TEXT = "This series holds no images (a report, a key-image note or a presentation state).";
  const ENDED_STATUSES = new Set([401, 403, 404, 410]);
  // A frame refused alone says nothing about access: an instance without pixel data is
  // a 404 too. Its failure asks the access check at once instead.
  const FRAME_ENDED_STATUSES = new Set([401, 403, 410]);
  const FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"';
  const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
  const STORED_JPEG_ACCEPT = `multipart/related; type="image/jpeg"; transfer-syntax=${JPEG_BASELINE}`;

  // --- State ---------------------------------------------------------------------------------
  const seriesCache = new Map(); // SeriesInstanceUID -> series record (metadata and pixels)
  let series = null; // the series on screen
  let index = 0; // current slice, 0-based
  let direction = 1; // last scroll direction: prefetch looks ahead that way first
  let shown = null; // slice last drawn; stays on screen while the current one loads
  let status = "loading";
  let drawnSinceOpen = false;
  let ended = false;
  let tool = "window";
  let cacheBytes = 0;
  let lastMeasure = null;
  let drag = null;
  let drawPending = false;
  let cineTimer = 0;
  let firstImageMs = null, allLoadedMs = null;
  const inFlight = new Set();
  const pointers = new Map();
  const view = { zoom: 1, panX: 0, panY: 0, center: null, width: null, invert: false };
  const seriesButtons = () => Array.from(document.querySelectorAll("#series-list [data-series-uid]"));
  const firstButton = seriesButtons()[0];
  const initialUid = viewer.dataset.initialSeries || (firstButton && firstButton.dataset.seriesUid) || "";

  // --- DICOM JSON ----------------------------------------------------------------------------
  // Values of one attribute. Lenient servers send DS/IS as strings, sometimes backslash-joined.
  function values(obj, tag) {
    const el = obj && obj[tag];
    if (!el || !Array.isArray(el.Value)) return [];
    return el.Value.flatMap((v) => (typeof v === "string" && v.includes("\\") ? v.split("\\") : [v]));
  }
  function toNumber(v) {
    if (typeof v === "number") return Number.isFinite(v) ? v : null;
    if (typeof v !== "string" || v.trim() === "") return null;
    const n = Number(v.trim());
    return Number.isFinite(n) ? n : null;
  }
  function num(obj, tag, fallback) {
    const n = toNumber(values(obj, tag)[0]);
    return n === null ? fallback : n;
  }
  function nums(obj, tag) {
    const list = values(obj, tag).map(toNumber);
    return list.every((n) => n !== null) ? list : [];
  }
  function text(obj, tag) {
    const v = values(obj, tag)[0];
    if (v === undefined || v === null) return "";
    return typeof v === "object" ? String(v.Alphabetic || "") : String(v).trim();
  }

  // Enhanced multi-frame objects (Enhanced CT, MR, XA...) keep pixel spacing, rescale and
  // window in functional groups (PS3.3 C.7.6.16), shared by every frame or given for each,
  // not at the top level. A frame's attributes are the top level's, overlaid by the shared
  // groups', then by its own.
  const FRAME_MACROS = [
    "00289110", // Pixel Measures: PixelSpacing
    "00289145", // Pixel Value Transformation: RescaleSlope, RescaleIntercept
    "00289132", // Frame VOI LUT: WindowCenter, WindowWidth
  ];
  function groupAttributes(group) {
    const out = {};
    if (!group || typeof group !== "object") return out;
    for (const macro of FRAME_MACROS) {
      const item = values(group, macro)[0];
      if (item && typeof item === "object") Object.assign(out, item);
    }
    return out;
  }

  // What is needed to decode and display one frame (shared by the frames that agree).
  function imageInfo(o) {
    const spacing = nums(o, "00280030");
    const imager = nums(o, "00181164");
    const sp = spacing.length >= 2 ? spacing : imager.length >= 2 ? imager : null;
    const photometric = text(o, "00280004").trim().toUpperCase();
    const spp = num(o, "00280002", 1);
    const info = {
      sop: text(o, "00080018"),
      rows: num(o, "00280010", 0),
      cols: num(o, "00280011", 0),
      bits: num(o, "00280100", 16),
      signed: num(o, "00280103", 0) === 1,
      spp,
      // Palette colour stores one index per pixel, coloured by the file's tables: the
      // server renders it, as it does images of three samples.
      colour: spp > 1 || photometric === "PALETTE COLOR",
      mono1: photometric === "MONOCHROME1",
      slope: num(o, "00281053", 1) || 1,
      intercept: num(o, "00281052", 0),
      center: num(o, "00281050", null),
      width: num(o, "00281051", null),
      voi: text(o, "00281056").trim().toUpperCase() || "LINEAR", // VOI LUT Function
      spacing: sp && sp[0] > 0 && sp[1] > 0 ? { row: sp[0], col: sp[1] } : null,
    };
    info.Type = pixelType(info);
    // Colour, an unusual layout, floating-point pixels (parametric maps: 7FE0,0008/0009)
    // or a Modality or VOI LUT table: the server renders those (PS3.3 C.11) as PNGs.
    const tables = has(o, "00283000") || has(o, "00283010");
    info.rendered = !info.Type || has(o, "7FE00008") || has(o, "7FE00009") || tables;
    // 8-bit YBR colour is what lossy JPEG stores (ultrasound, endoscopy, photographs), and a
    // browser decodes such a frame to the right RGB itself. If these frames are not stored
    // as JPEG baseline (or a de-identified link sends decoded pixels only), the server says
    // 406 and the series falls back to /rendered.
    info.storedJpeg = spp === 3 && info.bits === 8 && (photometric === "YBR_FULL_422" || photometric === "YBR_FULL");
    return info;
  }
  function has(o, tag) {
    return Boolean(o && typeof o === "object" && Object.prototype.hasOwnProperty.call(o, tag));
  }
  function pixelType(info) {
    if (info.colour) return null;
    if (info.bits === 8) return info.signed ? Int8Array : Uint8Array;
    if (info.bits === 16) return info.signed ? Int16Array : Uint16Array;
    if (info.bits === 32) return info.signed ? Int32Array : Uint32Array;
    return null;
  }

  // Slice order: position along the slice normal when every instance has one, else
  // InstanceNumber, else server order. Each frame of a multi-frame instance is one slice.
  function buildSlices(instances) {
    // Only instances with an image: a dose report or key-image note in the series has none.
    const imaged = (o) => o && typeof o === "object" && num(o, "00280010", 0) > 0 && num(o, "00280011", 0) > 0;
    const items = instances.filter(imaged).map((o, order) => {
      const ipp = nums(o, "00200032");
      const iop = nums(o, "00200037");
      return { o, order, inst: num(o, "00200013", null), ipp: ipp.length === 3 ? ipp : null,
        iop: iop.length === 6 ? iop : null };
    });
    const byOrder = (a, b) => a.order - b.order;
    if (items.length && items.every((i) => i.ipp && i.iop)) {
      const [r0, r1, r2, c0, c1, c2] = items[0].iop;
      const n = [r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0];
      for (const i of items) i.key = i.ipp[0] * n[0] + i.ipp[1] * n[1] + i.ipp[2] * n[2];
      items.sort((a, b) => a.key - b.key || (a.inst || 0) - (b.inst || 0) || byOrder(a, b));
    } else if (items.every((i) => i.inst !== null)) {
      items.sort((a, b) => a.inst - b.inst || byOrder(a, b));
    }
    const slices = [];
    for (const item of items) {
      const frames = Math.max(1, Math.round(num(item.o, "00280008", 1)));
      const shared = groupAttributes(values(item.o, "52009229")[0]);
      const perFrame = values(item.o, "52009230");
      const infos = new Map(); // frames that agree share one info (and one grey table)
      for (let f = 1; f <= frames; f++) {
        const own = groupAttributes(perFrame[f - 1]);
        const key = JSON.stringify(own);
        if (!infos.has(key)) infos.set(key, imageInfo(Object.assign({}, item.o, shared, own)));
        slices.push({ info: infos.get(key), frame: f, frames, data: null, bytes: 0, bitmap: false, pending: false, failed: false });
      }
    }
    return { slices, first: items.length ? items[0].o : null };
  }

  function seriesLabel(o) {
    const number = text(o, "00200011");
    const parts = [number ? "Series " + number : "Series"];
    for (const tag of ["00080060", "0008103E"]) if (text(o, tag)) parts.push(text(o, tag));
    return parts.join(" · ");
  }

  // --- Network -------------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status) { super("HTTP " + status); this.status = status; }
  }
  async function get(url, accept, signal) {
    const res = await fetch(url, { credentials: "same-origin", signal,
      headers: { Accept: accept, "X-Viewer-Session": cfg.session } });
    if (!res.ok) throw new HttpError(res.status);
    return res;
  }
  const seriesUrl = (uid) => `${cfg.root}/studies/${encodeURIComponent(cfg.study)}/series/${encodeURIComponent(uid)}`;
  const frameUrl = (s, sl, frames) => `${seriesUrl(s.uid)}/instances/${encodeURIComponent(sl.info.sop)}/frames/${frames}`;
  const isEnded = (err) => err instanceof HttpError && ENDED_STATUSES.has(err.status);

  function loadMetadata(s) {
    if (!s.meta) {
      s.meta = get(seriesUrl(s.uid) + "/metadata", "application/dicom+json")
        .then((res) => res.json())
        .then((list) => {
          if (!Array.isArray(list) || !list.length) throw new Error("The series has no instances.");
          const built = buildSlices(list);
          s.slices = built.slices;
          s.label = seriesLabel(built.first || list[0]);
          if (!built.slices.length) return; // no images: the series says so on screen
          const info = built.slices[0].info;
          s.colour = info.colour;
          if (!s.colour && info.center !== null && info.width > 0) s.initialWindow = { center: info.center, width: info.width };
        })
        .catch((err) => { s.meta = null; throw err; }); // a later click retries
    }
    return s.meta;
  }

  // Split a multipart/related body without decoding it as text. The first delimiter has no
  // leading CRLF; each part is headers, CRLF CRLF, bytes, then CRLF--boundary.
  const CRLF2 = new Uint8Array([13, 10, 13, 10]);
  function indexOf(hay, needle, from) {
    const last = hay.length - needle.length;
    for (let i = hay.indexOf(needle[0], from); i !== -1 && i <= last; i = hay.indexOf(needle[0], i + 1)) {
      let j = 1;
      while (j < needle.length && hay[i + j] === needle[j]) j++;
      if (j === needle.length) return i;
    }
    return -1;
  }
  function splitMultipart(buffer, contentType, expected) {
    if (!/^\s*multipart\//i.test(contentType)) return [buffer]; // a single bare frame
    const m = /boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))/i.exec(contentType);
    if (!m) throw new Error("No multipart boundary.");
    const bytes = new Uint8Array(buffer);
    const delim = new TextEncoder().encode("\r\n--" + (m[1] || m[2]));
    let pos = indexOf(bytes, delim.subarray(2), 0);
    if (pos < 0) throw new Error("Multipart boundary not found.");
    pos += delim.length - 2;
    const parts = [];
    while (pos + 1 < bytes.length && !(bytes[pos] === 45 && bytes[pos + 1] === 45)) {
      const head = indexOf(bytes, CRLF2, pos);
      if (head < 0) throw new Error("Malformed multipart part.");
      const start = head + 4;
      // The frame size is known: check for the delimiter right after it first. Faster, and
      // pixel bytes that happen to spell the boundary cannot end the part early.
      const at = start + expected;
      const fits = expected > 0 && at + delim.length <= bytes.length && delim.every((b, k) => bytes[at + k] === b);
      const end = fits ? at : indexOf(bytes, delim, start);
      if (end < 0) throw new Error("Unterminated multipart part.");
      parts.push(buffer.slice(start, end)); // own, aligned buffer for the typed array
      pos = end + delim.length;
    }
    return parts;
  }

  function decodePixels(buffer, info) {
    const count = info.rows * info.cols;
    if (!count || buffer.byteLength < count * info.Type.BYTES_PER_ELEMENT) throw new Error("Unexpected frame size.");
    return new info.Type(buffer, 0, count); // little-endian, as on every browser platform
  }

  // --- Fetch scheduler: nearest missing slice first, at most MAX_IN_FLIGHT requests ---------
  const needs = (sl) => !sl.data && !sl.pending && !sl.failed;
  const useRendered = (s, sl) => s.rendered || sl.info.rendered;
  const useStoredJpeg = (s, sl) => sl.info.storedJpeg && !s.storedRefused;
  // A grey slice the server windowed (its PNG): the window shown and the presets would not
  // change it, so they are not offered for it.
  const serverWindowed = (s, sl) => useRendered(s, sl) && !useStoredJpeg(s, sl);
  const sliceBytes = (sl) => Math.max(1, sl.info.rows * sl.info.cols * (sl.info.Type ? sl.info.Type.BYTES_PER_ELEMENT : 4));

  function pump() {
    if (ended || !series || !series.slices) return;
    while (inFlight.size < MAX_IN_FLIGHT) {
      const group = nextGroup(series);
      if (!group) return;
      request(series, group);
    }
  }

  // Only the `capacity` slices around the current one that the cache can hold are fetched, so
  // the prefetch never evicts what it has just fetched. Near either end the window shifts inwards.
  function nextGroup(s) {
    const sl = s.slices;
    const n = sl.length;
    const capacity = Math.max(1, Math.floor(CACHE_BYTES / sliceBytes(sl[index])));
    const lo = Math.max(0, Math.min(index - (capacity >> 1), n - capacity));
    const hi = Math.min(n - 1, lo + capacity - 1);
    const fits = (j) => j >= lo && j <= hi && needs(sl[j]);
    let pick = needs(sl[index]) ? index : -1;
    if (pick < 0 && s.shownOnce) { // prefetch only after the first image is up
      for (let d = 1; d < n && pick < 0; d++) {
        if (fits(index + d * direction)) pick = index + d * direction;
        else if (fits(index - d * direction)) pick = index - d * direction;
      }
    }
    if (pick < 0) return null;
    const group = [sl[pick]];
    // Neighbouring frames of one multi-frame instance travel in one request.
    const batched = !useRendered(s, sl[pick]) || useStoredJpeg(s, sl[pick]);
    const limit = Math.max(1, Math.min(s.batchLimit || FRAME_BATCH, Math.floor(BATCH_BYTES / sliceBytes(sl[pick]))));
    if (sl[pick].frames > 1 && s.shownOnce && batched) {
      for (let d = 1; d < limit * 2 && group.length < limit; d++) {
        for (const j of [pick + d, pick - d]) {
          if (group.length < limit && fits(j) && sl[j].info.sop === sl[pick].info.sop) group.push(sl[j]);
        }
      }
      group.sort((a, b) => a.frame - b.frame);
    }
    return group;
  }

  async function request(s, group) {
    const req = { series: s, controller: new AbortController() };
    const signal = req.controller.signal;
    inFlight.add(req);
    for (const sl of group) sl.pending = true;
    try {
      if (useStoredJpeg(s, group[0])) {
        const frames = group.map((g) => g.frame).join(",");
        const res = await get(frameUrl(s, group[0], frames), STORED_JPEG_ACCEPT, signal);
        const parts = splitMultipart(await res.arrayBuffer(), res.headers.get("Content-Type") || "", 0);
        if (parts.length < group.length) throw new Error("Fewer frames than requested.");
        const bitmaps = await Promise.all(
          group.map((sl, i) => createImageBitmap(new Blob([parts[i]], { type: "image/jpeg" }))));
        s.storedJpegFrames = (s.storedJpegFrames || 0) + group.length;
        if (s === series) viewer.setAttribute("data-stored-jpeg-frames", String(s.storedJpegFrames));
        if (signal.aborted) bitmaps.forEach((b) => b.close());
        else group.forEach((sl, i) => store(s, sl, bitmaps[i]));
      } else if (useRendered(s, group[0])) {
        const res = await get(frameUrl(s, group[0], group[0].frame) + "/rendered", "image/png", signal);
        const bitmap = await createImageBitmap(await res.blob());
        if (signal.aborted) bitmap.close(); else store(s, group[0], bitmap);
      } else {
        const res = await get(frameUrl(s, group[0], group.map((g) => g.frame).join(",")), FRAMES_ACCEPT, signal);
        const buffer = await res.arrayBuffer();
        const parts = splitMultipart(buffer, res.headers.get("Content-Type") || "", sliceBytes(group[0]));
        if (parts.length < group.length) throw new Error("Fewer frames than requested.");
        if (!signal.aborted) group.forEach((sl, i) => store(s, sl, decodePixels(parts[i], sl.info)));
      }
    } catch (err) {
      if (signal.aborted || ended) {
        // switched series or access ended: nothing to record
      } else if (err instanceof HttpError && FRAME_ENDED_STATUSES.has(err.status)) {
        endAccess();
      } else if (err instanceof HttpError && err.status === 406 && useStoredJpeg(s, group[0])) {
        s.storedRefused = true; // not stored as JPEG baseline, or not sent as stored: /rendered
      } else if (err instanceof HttpError && err.status === 406 && group.length > 1) {
        // Too many bytes decoded in one answer: smaller batches, still windowed here.
        s.batchLimit = Math.max(1, group.length >> 1);
      } else if (err instanceof HttpError && err.status === 406 && !s.rendered) {
        s.rendered = true; // the server will not send raw frames: use /rendered from now on
      } else {
        for (const sl of group) if (!sl.data) sl.failed = true;
        console.warn("viewer: frame failed", err && err.message);
        if (err instanceof HttpError && err.status === 404) checkAccessSoon();
      }
    } finally {
      for (const sl of group) sl.pending = false;
      inFlight.delete(req);
      if (s === series) requestDraw();
      pump();
    }
  }

  // --- Cache ----------------------------------------------------------------------------------
  function store(s, sl, data) {
    if (ended) { if (data.close) data.close(); return; }
    sl.data = data;
    sl.bitmap = typeof data.close === "function";
    sl.bytes = sl.bitmap ? data.width * data.height * 4 : data.byteLength;
    cacheBytes += sl.bytes;
    s.loaded++;
    if (!s.initialWindow && !sl.bitmap) {
      s.initialWindow = windowFromPixels(data, sl.info);
      if (s === series && view.width === null) Object.assign(view, s.initialWindow);
    }
    if (cacheBytes > CACHE_BYTES) trimCache();
    if (allLoadedMs === null && s.uid === initialUid && s.loaded === s.slices.length) {
      allLoadedMs = performance.now() - T0;
      viewer.setAttribute("data-all-loaded-ms", String(Math.round(allLoadedMs)));
    }
    if (s === series) requestDraw();
  }
  function evict(s, sl) {
    if (!sl.data) return;
    if (sl.bitmap) sl.data.close();
    cacheBytes -= sl.bytes;
    sl.data = null;
    sl.bytes = 0;
    s.loaded--;
  }
  // Other series go first, then the slices of this one farthest from the current slice.
  function trimCache() {
    for (const s of seriesCache.values()) {
      if (s === series || !s.slices) continue;
      for (const sl of s.slices) evict(s, sl);
      if (cacheBytes <= CACHE_BYTES) return;
    }
    const sl = series.slices;
    let lo = 0, hi = sl.length - 1;
    while (cacheBytes > CACHE_BYTES && lo < hi) evict(series, sl[index - lo >= hi - index ? lo++ : hi--]);
  }
  function windowFromPixels(px, info) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < px.length; i++) {
      const v = px[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const a = lo * info.slope + info.intercept, b = hi * info.slope + info.intercept;
    return { center: (a + b) / 2, width: Math.max(1, Math.abs(b - a)) };
  }

  // --- Rendering --------------------------------------------------------------------------------
  // Monochrome frames go stored value -> LUT -> RGBA into an offscreen canvas at native size;
  // the visible canvas only scales that, so pan/zoom never touch the pixels.
  const off = document.createElement("canvas");
  const offCtx = off.getContext("2d");
  let imageData = null, image32 = null, offKey = "", offSlice = null;
  let lut = { key: "", table: null, offset: 0 };

  // One LUT over the whole stored range of 8/16-bit types (65536 entries at most): building it
  // costs less than one frame, and re-windowing becomes a table lookup per pixel.
  function lutFor(info) {
    const T = info.Type;
    const size = T.BYTES_PER_ELEMENT === 1 ? 256 : T.BYTES_PER_ELEMENT === 2 ? 65536 : 0;
    if (!size) return null;
    const offset = T === Int8Array || T === Int16Array ? size / 2 : 0;
    const flip = info.mono1 !== view.invert;
    const key = [size, offset, info.slope, info.intercept, info.voi, flip, view.center, view.width].join();
    if (lut.key === key) return lut;
    const table = new Uint32Array(size);
    for (let s = 0; s < size; s++) table[s] = grey((s - offset) * info.slope + info.intercept, flip, info.voi);
    lut = { key, table, offset };
    return lut;
  }
  // The window through the file's VOI LUT function (PS3.3 C.11.2.1.2 and C.11.2.1.3), as
  // the server renders it, as opaque grey RGBA (little-endian).
  function grey(v, flip, voi) {
    const c = view.center, w = view.width;
    let g;
    if (voi === "SIGMOID") g = 255 / (1 + Math.exp((-4 * (v - c)) / w));
    else if (voi === "LINEAR_EXACT") g = ((v - c) / w + 0.5) * 255;
    else if (w <= 1) g = v < c - 0.5 ? 0 : 255; // a width of 1 is a threshold
    else g = ((v - (c - 0.5)) / (w - 1) + 0.5) * 255;
    g = g <= 0 ? 0 : g >= 255 ? 255 : (g + 0.5) | 0;
    if (flip) g = 255 - g;
    return (0xff000000 | (g << 16) | (g << 8) | g) >>> 0;
  }

  function renderMono(sl) {
    const key = [view.center, view.width, view.invert].join();
    if (offSlice === sl && offKey === key) return;
    const { rows, cols } = sl.info;
    if (off.width !== cols || off.height !== rows || !imageData) {
      off.width = cols;
      off.height = rows;
      imageData = offCtx.createImageData(cols, rows);
      image32 = new Uint32Array(imageData.data.buffer);
    }
    const px = sl.data;
    const table = lutFor(sl.info);
    if (table) {
      const t = table.table;
      const o = table.offset;
      for (let i = 0; i < px.length; i++) image32[i] = t[px[i] + o];
    } else { // 32-bit: too wide for a table
      const flip = sl.info.mono1 !== view.invert;
      for (let i = 0; i < px.length; i++) image32[i] = grey(px[i] * sl.info.slope + sl.info.intercept, flip, sl.info.voi);
    }
    offCtx.putImageData(imageData, 0, 0);
    offSlice = sl;
    offKey = key;
  }

  // Image (column, row) to canvas CSS pixels. Fit is zoom 1; non-square pixels keep their aspect.
  function geometry(info) {
    const cw = viewport.clientWidth, ch = viewport.clientHeight;
    const aspect = info.spacing ? info.spacing.row / info.spacing.col : 1;
    const fit = Math.min(cw / info.cols, ch / (info.rows * aspect)) || 1;
    const sx = fit * view.zoom;
    const sy = sx * aspect;
    return { sx, sy, ox: cw / 2 + view.panX - (info.cols * sx) / 2, oy: ch / 2 + view.panY - (info.rows * sy) / 2 };
  }
  const current = () => (series && series.slices ? series.slices[index] : null);

  // Status text and data-* follow at once (tests read them right after an action); the
  // pixels are drawn once per animation frame however many changes came in between.
  function requestDraw() {
    syncStatus();
    if (!drawPending) {
      drawPending = true;
      requestAnimationFrame(draw);
    }
  }

  function draw() {
    drawPending = false;
    const dpr = window.devicePixelRatio || 1;
    const bw = Math.max(1, Math.round(viewport.clientWidth * dpr));
    const bh = Math.max(1, Math.round(viewport.clientHeight * dpr));
    if (canvas.width !== bw || canvas.height !== bh) {
      canvas.width = bw;
      canvas.height = bh;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, bw, bh);
    const cur = current();
    let pic = null;
    if (cur && !ended) {
      if (cur.data) pic = cur;
      else if (!cur.failed && shown && shown.data) pic = shown;
    }
    if (pic) {
      const g = geometry(pic.info);
      if (!pic.bitmap && view.width === null) Object.assign(view, windowFromPixels(pic.data, pic.info));
      if (!pic.bitmap) renderMono(pic);
      ctx.setTransform(dpr * g.sx, 0, 0, dpr * g.sy, dpr * g.ox, dpr * g.oy);
      ctx.imageSmoothingEnabled = true;
      if (pic.bitmap && view.invert) ctx.filter = "invert(1)";
      ctx.drawImage(pic.bitmap ? pic.data : off, 0, 0);
      ctx.filter = "none";
      if (pic === cur) drawMeasures(g, dpr);
      shown = pic;
    }
    if (cur && !drawnSinceOpen && (pic === cur || cur.failed)) {
      drawnSinceOpen = true;
      series.shownOnce = true;
      if (status === "loading") status = "ready";
      if (firstImageMs === null && series.uid === initialUid && pic === cur) {
        firstImageMs = performance.now() - T0;
        viewer.setAttribute("data-first-image-ms", String(Math.round(firstImageMs)));
      }
      pump(); // start the background prefetch
    }
    syncStatus();
  }

  function measureLength(info, m) {
    const dx = m.x2 - m.x1, dy = m.y2 - m.y1;
    if (info.spacing) return { value: Math.hypot(dx * info.spacing.col, dy * info.spacing.row), unit: "mm" };
    return { value: Math.hypot(dx, dy), unit: "px" };
  }
  const lengthText = (len) => len.value.toFixed(1) + " " + len.unit;

  function drawMeasures(g, dpr) {
    const list = (series.measures.get(index) || []).slice();
    if (drag && drag.mode === "measure" && drag.slice === index) list.push(drag.line);
    if (!list.length) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.lineJoin = "round";
    const cw = viewport.clientWidth;
    for (const m of list) {
      const x1 = g.ox + m.x1 * g.sx, y1 = g.oy + m.y1 * g.sy;
      const x2 = g.ox + m.x2 * g.sx, y2 = g.oy + m.y2 * g.sy;
      const label = lengthText(measureLength(series.slices[index].info, m));
      for (const [colour, width] of [["rgba(0,0,0,.75)", 3.5], ["#ffd54a", 1.5]]) {
        ctx.strokeStyle = colour;
        ctx.lineWidth = width;
        ctx.beginPath();
        ctx.moveTo(x1, y1);
        ctx.lineTo(x2, y2);
        for (const [x, y] of [[x1, y1], [x2, y2]]) { ctx.moveTo(x - 4, y); ctx.lineTo(x + 4, y); ctx.moveTo(x, y - 4); ctx.lineTo(x, y + 4); }
        ctx.stroke();
      }
      // Label beyond the end point, pulled back inside the canvas near the right edge.
      const w = ctx.measureText(label).width;
      const lx = x2 + 10 + w > cw ? x2 - 10 - w : x2 + 10;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0,0,0,.85)";
      ctx.strokeText(label, lx, y2 - 10);
      ctx.fillStyle = "#ffd54a";
      ctx.fillText(label, lx, y2 - 10);
    }
  }

  // --- Status: overlays and the data-* contract (written only when a value changes) -------
  function setAttr(name, value) {
    if (value === null || value === undefined) {
      if (viewer.hasAttribute(name)) viewer.removeAttribute(name);
    } else if (viewer.getAttribute(name) !== String(value)) viewer.setAttribute(name, String(value));
  }
  function setText(node, value) {
    if (node && node.textContent !== value) node.textContent = value;
  }

  function syncStatus() {
    const cur = current();
    const n = cur ? series.slices.length : 0;
    const mono = !!cur && !series.colour && !serverWindowed(series, cur) && view.width !== null;
    setAttr("data-state", status);
    setAttr("data-series", series ? series.uid : null);
    setAttr("data-slice", n ? index + 1 : null);
    setAttr("data-slices", n ? n : null);
    setAttr("data-loaded", series ? series.loaded : null);
    setAttr("data-window-center", mono ? Math.round(view.center) : null);
    setAttr("data-window-width", mono ? Math.round(view.width) : null);
    setAttr("data-zoom", view.zoom.toFixed(2));
    setAttr("data-measure-mm", lastMeasure && lastMeasure.unit === "mm" ? lastMeasure.value.toFixed(1) : null);
    setText(out.series, series && series.label ? series.label : "");
    setText(out.slice, n ? `Slice ${index + 1} / ${n}` : "");
    setText(out.wl, mono ? `W ${Math.round(view.width)} L ${Math.round(view.center)}` : "");
    setText(out.zoom, `Zoom ${Math.round(view.zoom * 100)}%`);
    setText(out.measure, lastMeasure ? "Distance: " + lengthText(lastMeasure) : "");
    if (slider) {
      if (slider.max !== String(Math.max(1, n))) slider.max = String(Math.max(1, n));
      if (slider.value !== String(index + 1)) slider.value = String(index + 1);
      if (slider.disabled !== n < 2) slider.disabled = n < 2;
      const valueText = n ? `Slice ${index + 1} of ${n}` : "No images";
      if (slider.getAttribute("aria-valuetext") !== valueText) slider.setAttribute("aria-valuetext", valueText);
    }
    if (presetSelect && presetSelect.disabled !== !mono) presetSelect.disabled = !mono;
    const empty = Boolean(series && series.slices && series.slices.length === 0);
    const msg = ended ? ENDED_TEXT : status === "error" ? SERIES_ERROR_TEXT : empty ? NO_IMAGES_TEXT
      : cur && cur.failed ? IMAGE_ERROR_TEXT : "";
    if (message) {
      setText(message, msg);
      if (message.hidden !== !msg) message.hidden = !msg;
    }
    viewport.classList.toggle("is-pending", !ended && !empty && status !== "error" && (!cur || (!cur.data && !cur.failed)));
  }

  // --- Actions ----------------------------------------------------------------------------------
  function goTo(n) {
    const cur = current();
    if (!cur || !Number.isFinite(n)) return;
    const next = Math.min(series.slices.length, Math.max(1, Math.round(n))) - 1;
    if (next === index) return;
    direction = next > index ? 1 : -1;
    index = next;
    pump(); // re-prioritise the prefetch around the new slice
    requestDraw();
  }
  const step = (delta) => current() && goTo(index + 1 + delta);

  function setWindow(center, width) {
    const cur = current();
    if (!cur || series.colour || serverWindowed(series, cur) || !Number.isFinite(center) || !Number.isFinite(width)) return;
    view.center = center;
    view.width = Math.max(1, width);
    requestDraw();
  }
  function applyPreset(name) {
    if (!current() || series.colour || serverWindowed(series, current())) return;
    const p = PRESETS[name] || (series.initialWindow && [series.initialWindow.center, series.initialWindow.width]);
    if (presetSelect) presetSelect.value = PRESETS[name] ? name : "";
    if (p) setWindow(p[0], p[1]);
  }
  // After a manual drag the select shows "Custom" instead of a preset that no longer applies.
  let customOption = null;
  if (presetSelect) {
    customOption = new Option("Custom", "custom");
    customOption.disabled = true;
    customOption.hidden = true;
    presetSelect.appendChild(customOption);
  }
  const markCustom = () => { if (customOption) presetSelect.value = "custom"; };

  function setTool(name) {
    tool = name;
    for (const b of viewer.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === name));
    viewer.setAttribute("data-active-tool", name);
  }
  function setInvert(on) {
    view.invert = on;
    $("invert") && $("invert").setAttribute("aria-pressed", String(on));
    requestDraw();
  }
  function fit() {
    view.zoom = 1;
    view.panX = view.panY = 0;
    requestDraw();
  }
  function clearMeasures() {
    if (series) series.measures.clear();
    if (drag && drag.mode === "measure") drag = null;
    lastMeasure = null;
    requestDraw();
  }
  function reset() {
    fit();
    setInvert(false);
    applyPreset("");
    clearMeasures();
  }
  function zoomAt(zoom, x, y) {
    const z = Math.min(40, Math.max(0.1, zoom));
    const f = z / view.zoom;
    const cx = viewport.clientWidth / 2, cy = viewport.clientHeight / 2;
    // keep the image point under (x, y) where it is
    view.panX = x - cx - (x - cx - view.panX) * f;
    view.panY = y - cy - (y - cy - view.panY) * f;
    view.zoom = z;
    requestDraw();
  }

  function setCine(on) {
    const button = $("cine");
    clearInterval(cineTimer);
    cineTimer = 0;
    if (on && current() && series.slices.length > 1 && !ended) {
      cineTimer = setInterval(() => {
        const n = series.slices.length;
        direction = 1;
        index = (index + 1) % n; // loops
        pump();
        requestDraw();
      }, CINE_MS);
    }
    if (button) {
      button.setAttribute("aria-pressed", String(!!cineTimer));
      button.textContent = cineTimer ? "Pause" : "Play";
    }
  }

  function endAccess() {
    if (ended) return;
    ended = true;
    status = "ended";
    setCine(false);
    for (const req of inFlight) req.controller.abort();
    // Access was withdrawn: drop the decoded pixels rather than keep them viewable.
    for (const s of seriesCache.values()) if (s.slices) for (const sl of s.slices) evict(s, sl);
    shown = null;
    offSlice = null;
    requestDraw();
  }

  // Access can end while nothing is being fetched (every image already loaded), so the
  // viewer asks now and then, and when its tab comes back into view. A redirect (to the
  // sign-in page) counts as ended; a network failure does not (the next check asks again).
  // A check also says whether the reader has scrolled, windowed or typed since the last
  // one: reading images already loaded asks the server nothing, and that must count as
  // activity for the sign-in's idle limit, while an unattended viewer must not.
  const ACCESS_CHECK_MS = Number(viewer.dataset.accessCheckMs) || 30000;
  let lastAccessCheck = performance.now();
  let lastInput = 0;
  for (const type of ["pointerdown", "wheel", "keydown", "touchstart"]) {
    viewer.addEventListener(type, () => { lastInput = performance.now(); }, { passive: true });
  }
  async function checkAccess() {
    if (ended) return;
    const active = lastInput > lastAccessCheck ? "?active=1" : "";
    lastAccessCheck = performance.now();
    try {
      const res = await fetch(`${cfg.root}/studies/${encodeURIComponent(cfg.study)}/access${active}`, {
        credentials: "same-origin", redirect: "manual", headers: { "X-Viewer-Session": cfg.session } });
      if (ENDED_STATUSES.has(res.status) || res.type === "opaqueredirect") endAccess();
    } catch (err) {
      // offline for a moment: keep what is on screen until a check gets an answer
    }
  }
  function checkAccessSoon() {
    if (performance.now() - lastAccessCheck > 2000) checkAccess();
  }
  const accessTimer = setInterval(() => {
    if (ended) clearInterval(accessTimer);
    else if (!document.hidden) checkAccess();
  }, ACCESS_CHECK_MS);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && performance.now() - lastAccessCheck >= ACCESS_CHECK_MS) checkAccess();
  });

  async function openSeries(uid) {
    if (!uid || ended) return;
    setCine(false);
    let s = seriesCache.get(uid);
    if (!s) {
      s = { uid, slices: null, meta: null, loaded: 0, label: "", colour: false, rendered: false, storedRefused: false,
        initialWindow: null, shownOnce: false, measures: new Map() };
      seriesCache.set(uid, s);
    }
    for (const req of inFlight) if (req.series !== s) req.controller.abort();
    series = s;
    index = 0;
    direction = 1;
    shown = null;
    drag = null;
    lastMeasure = null;
    drawnSinceOpen = false;
    status = "loading";
    view.center = view.width = null;
    for (const b of seriesButtons()) b.setAttribute("aria-pressed", String(b.dataset.seriesUid === uid));
    requestDraw();
    try {
      await loadMetadata(s);
    } catch (err) {
      if (series !== s || ended) return;
      if (isEnded(err)) endAccess(); else status = "error";
      requestDraw();
      return;
    }
    if (series !== s || ended) return; // another series was chosen meanwhile
    if (!s.slices.length) {
      status = "ready";
      requestDraw();
      return;
    }
    fit();
    setInvert(false);
    if (s.initialWindow) Object.assign(view, s.initialWindow);
    if (presetSelect) presetSelect.value = "";
    pump();
    requestDraw();
  }

  // --- Pointer input: mouse, pen and touch through Pointer Events ------------------------------
  function point(e) {
    const r = canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }
  let lastTap = null;

  canvas.addEventListener("pointerdown", (e) => {
    const cur = current();
    if (!cur || ended || e.button > 2) return;
    // No preventDefault here: the compatibility mousedown focuses the canvas natively, so a
    // click does not light up the keyboard focus ring.
    const p = point(e);
    try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* pointer already gone */ }
    pointers.set(e.pointerId, p);
    if (pointers.size === 2) { // second finger: pinch-zoom and pan, abandon any one-finger action
      const [a, b] = pointers.values();
      drag = { mode: "pinch", dist: Math.hypot(a.x - b.x, a.y - b.y), mx: (a.x + b.x) / 2, my: (a.y + b.y) / 2 };
      return;
    }
    if (pointers.size > 2) return;
    const mode = e.button === 1 || e.button === 2 ? "pan" : tool;
    drag = { mode, x0: p.x, y0: p.y, x: p.x, y: p.y, center: view.center, width: view.width, zoom: view.zoom };
    if (mode === "measure") {
      const g = geometry(cur.info);
      const q = { x: (p.x - g.ox) / g.sx, y: (p.y - g.oy) / g.sy };
      drag.slice = index;
      drag.line = { x1: q.x, y1: q.y, x2: q.x, y2: q.y };
    }
  });

  canvas.addEventListener("pointermove", (e) => {
    if (!pointers.has(e.pointerId)) return;
    const p = point(e);
    pointers.set(e.pointerId, p);
    if (!drag) return;
    if (drag.mode === "pinch") {
      if (pointers.size < 2) return;
      const [a, b] = pointers.values();
      const dist = Math.hypot(a.x - b.x, a.y - b.y);
      const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
      if (drag.dist > 0) zoomAt((view.zoom * dist) / drag.dist, drag.mx, drag.my);
      view.panX += mx - drag.mx;
      view.panY += my - drag.my;
      Object.assign(drag, { dist, mx, my });
    } else if (drag.mode === "window") {
      if (series.colour || drag.width === null) return;
      // Scaled to the width at drag start: 300 px of drag changes it by one whole width, which
      // feels the same for CT (hundreds of HU) and MR (arbitrary units).
      const k = Math.max(drag.width, 1) / 300;
      setWindow(drag.center + (p.y - drag.y0) * k, drag.width + (p.x - drag.x0) * k);
      markCustom();
    } else if (drag.mode === "pan") {
      view.panX += p.x - drag.x;
      view.panY += p.y - drag.y;
    } else if (drag.mode === "zoom") {
      zoomAt(drag.zoom * Math.exp(-(p.y - drag.y0) / 150), drag.x0, drag.y0);
    } else if (drag.mode === "measure") {
      const g = geometry(series.slices[drag.slice].info);
      drag.line.x2 = (p.x - g.ox) / g.sx;
      drag.line.y2 = (p.y - g.oy) / g.sy;
    }
    drag.x = p.x;
    drag.y = p.y;
    requestDraw();
  });

  function endPointer(e) {
    if (!pointers.has(e.pointerId)) return;
    const p = pointers.get(e.pointerId);
    pointers.delete(e.pointerId);
    const tap = !!drag && drag.mode !== "pinch" && Math.hypot(p.x - drag.x0, p.y - drag.y0) < 10;
    if (drag && drag.mode === "measure" && e.type === "pointerup") {
      const moved = Math.hypot(p.x - drag.x0, p.y - drag.y0);
      if (moved >= 3 && drag.slice === index) { // a click is not a measurement
        const line = drag.line;
        Object.assign(line, measureLength(series.slices[drag.slice].info, line));
        if (!series.measures.has(drag.slice)) series.measures.set(drag.slice, []);
        series.measures.get(drag.slice).push(line);
        lastMeasure = line;
      }
    }
    // After a pinch the remaining finger does nothing until it lifts (no jump into a tool).
    drag = null;
    if (e.pointerType === "touch" && e.type === "pointerup" && tap) {
      // Double tap fits, like double click (which touch browsers do not always send).
      const now = performance.now();
      if (lastTap && now - lastTap.t < 350 && Math.hypot(p.x - lastTap.x, p.y - lastTap.y) < 30) { fit(); lastTap = null; }
      else lastTap = { t: now, x: p.x, y: p.y };
    }
    requestDraw();
  }
  canvas.addEventListener("pointerup", endPointer);
  canvas.addEventListener("pointercancel", endPointer);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault()); // right-drag pans
  canvas.addEventListener("mousedown", (e) => { // middle-drag pans instead of autoscrolling
    if (e.button === 1) { e.preventDefault(); canvas.focus({ preventScroll: true }); }
  });
  canvas.addEventListener("dblclick", (e) => { e.preventDefault(); fit(); });

  // Wheel: one slice per notch; touchpads send many small deltas, which are accumulated.
  // At most one slice per 16 ms so free-spinning wheels stay controllable.
  let wheelAcc = 0;
  let wheelAt = 0;
  canvas.addEventListener("wheel", (e) => {
    if (!current()) return;
    e.preventDefault();
    const px = e.deltaY * (e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1);
    if (e.ctrlKey) { // Ctrl+wheel, and touchpad pinch, zoom at the pointer
      const p = point(e);
      zoomAt(view.zoom * Math.exp(-px / 300), p.x, p.y);
      return;
    }
    wheelAcc += px;
    if (Math.abs(wheelAcc) < 40 || e.timeStamp - wheelAt < 16) return;
    wheelAt = e.timeStamp;
    step(wheelAcc > 0 ? 1 : -1);
    wheelAcc = 0;
  }, { passive: false });

  // --- Keyboard -----------------------------------------------------------------------------------
  const KEYS = {
    ArrowUp: () => step(-1), ArrowDown: () => step(1),
    ArrowLeft: () => step(-1), ArrowRight: () => step(1), PageUp: () => step(-10), PageDown: () => step(10),
    Home: () => goTo(1), End: () => current() && goTo(series.slices.length),
    w: () => setTool("window"), p: () => setTool("pan"), z: () => setTool("zoom"), m: () => setTool("measure"),
    i: () => setInvert(!view.invert), f: fit, r: reset, " ": () => setCine(!cineTimer), Escape: clearMeasures,
    1: () => applyPreset("brain"), 2: () => applyPreset("lung"), 3: () => applyPreset("bone"), 4: () => applyPreset("abdomen"),
  };
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || e.isComposing) return;
    const t = e.target instanceof Element ? e.target : null;
    if (t && t !== canvas && t.closest("input, select, textarea, [contenteditable]:not([contenteditable=false])")) return;
    // Space and Enter on a button or link keep their native meaning.
    if (t && (e.key === " " || e.key === "Enter") && t.closest("button, a, summary")) return;
    const action = KEYS[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (!action) return;
    e.preventDefault();
    action();
  });

  // --- Controls ------------------------------------------------------------------------------------
  for (const b of viewer.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  const on = (id, type, fn) => { const node = $(id); if (node) node.addEventListener(type, fn); };
  on("fit", "click", fit);
  on("invert", "click", () => setInvert(!view.invert));
  on("cine", "click", () => setCine(!cineTimer));
  on("reset", "click", reset);
  on("preset", "change", () => applyPreset(presetSelect.value));
  on("slice-slider", "input", () => goTo(Number(slider.value)));
  on("series-list", "click", (e) => {
    const b = e.target instanceof Element && e.target.closest("[data-series-uid]");
    if (b && (!series || b.dataset.seriesUid !== series.uid || status === "error")) openSeries(b.dataset.seriesUid);
  });

  // The viewer fills the window below whatever the page puts above it (CSS reads --viewer-top).
  function place() {
    const top = viewer.getBoundingClientRect().top + window.scrollY;
    viewer.style.setProperty("--viewer-top", Math.round(top) + "px");
  }
  window.addEventListener("resize", place);
  if (document.fonts) document.fonts.ready.then(place);
  if (window.ResizeObserver) new ResizeObserver(requestDraw).observe(viewport);
  else window.addEventListener("resize", requestDraw);

  // --- Test and benchmark hooks ---------------------------------------------------------------------
  window.portalViewer = Object.freeze({
    goTo(n) { goTo(Number(n)); return index + 1; },
    setWindow(center, width) { setWindow(Number(center), Number(width)); markCustom(); },
    state() {
      const cur = current();
      const g = cur ? geometry(cur.info) : null;
      return {
        state: status, series: series ? series.uid : null, slice: cur ? index + 1 : 0,
        slices: cur ? series.slices.length : 0, loaded: series ? series.loaded : 0,
        windowCenter: view.center, windowWidth: view.width, invert: view.invert,
        zoom: view.zoom, panX: view.panX, panY: view.panY, tool, cine: !!cineTimer,
        measure: lastMeasure ? { value: lastMeasure.value, unit: lastMeasure.unit } : null,
        // image column/row -> canvas CSS pixels: x = originX + col * scaleX, y = originY + row * scaleY
        originX: g ? g.ox : 0, originY: g ? g.oy : 0, scaleX: g ? g.sx : 0, scaleY: g ? g.sy : 0,
        firstImageMs, allLoadedMs, cacheBytes, inFlight: inFlight.size,
      };
    },
  });

  setTool("window");
  place();
  viewer.setAttribute("data-state", "loading");
  if (initialUid) openSeries(initialUid);
  else { status = "error"; requestDraw(); }
})();
