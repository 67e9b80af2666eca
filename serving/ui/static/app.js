/* sesam click-to-mask page (served at /ui, no build step, no external resources).
 *
 * Open an image -> POST /embed (multipart field "image") once; every change of the prompt (left
 * click: object point, right click: background point, drag: box; Undo; Clear) -> POST /predict
 * {image_id, prompts: [{points, labels, box, mask_input_id}], multimask, mask_format: "rle"} in
 * original-image pixels. The answer's best mask (COCO compressed RLE, column-major) is decoded
 * here and drawn over the image; its logits_id is sent back as the next request's mask_input_id.
 *
 * multimask rule (SAM's habit): true when the prompt is one point and nothing else (a lone click
 * is ambiguous: whole, part or sub-part), false otherwise (points add up, a box is explicit).
 * Exports: a 0/255 grayscale PNG at the image's size and the server's RLE as JSON.
 * Test hook: window.sesam (state, lastRequest, lastResponse, latencies, exportPng, exportRle).
 */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const imageCanvas = $("image"), overlay = $("overlay"), stage = $("stage"), statusLine = $("status");
  const keyInput = $("api-key"), classInput = $("class-name");
  const MASK_RGB = [236, 72, 153], DRAG_PX = 5;

  // actions: [{kind: "point", x, y, label} | {kind: "box", box}]; answers[k]: /predict's answer to
  // actions[0..k]; gen changes on undo / clear / new image, so a late answer is dropped
  const state = { imageId: null, fileName: null, width: 0, height: 0, backend: null,
    actions: [], answers: [], requests: [], gen: 0, syncing: false, mask: null, drawn: 0, drag: null };
  const hook = { state, lastRequest: null, lastResponse: null, latencies: [], exportPng, exportRle };
  window.sesam = hook;

  keyInput.value = sessionStorage.getItem("sesam.apiKey") || "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem("sesam.apiKey", keyInput.value.trim());
    askInfo();
  });

  function setStatus(text, error = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", error);
  }

  function showBackend(name) {
    const badge = $("engine"), prior = /^classical/.test(name);
    badge.textContent = prior ? `engine: classical prior (not SAM) · ${name}` : `engine: SAM · ${name}`;
    badge.className = "badge " + (prior ? "prior" : "sam");
  }

  // -- the API: JSON errors {"error": {code, message, field}} become an Error with .code/.field --
  async function api(route, body) {
    const headers = {}, key = keyInput.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (!(body instanceof FormData)) headers["Content-Type"] = "application/json";
    const res = await fetch(route, { method: "POST", headers,
      body: body instanceof FormData ? body : JSON.stringify(body) });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const info = (data && data.error) || {};
      const err = new Error(`${info.message || res.statusText} (HTTP ${res.status}${info.code ? ", " + info.code : ""})`);
      Object.assign(err, { status: res.status, code: info.code, field: info.field });
      throw err;
    }
    return data;
  }

  // -- COCO compressed RLE (pycocotools rleFrString) -> row-major Uint8Array of 0/1 --
  function decodeRle(rle) {
    const [h, w] = rle.size, s = rle.counts, counts = [];
    for (let p = 0; p < s.length;) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p++) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    const out = new Uint8Array(h * w);
    let i = 0;
    counts.forEach((n, j) => {
      if (j % 2) for (let e = i + n; i < e; i++) out[(i % h) * w + ((i / h) | 0)] = 1;
      else i += n;
    });
    return out;
  }

  // -- drawing: the mask (filled, opaque outline), then the box and the points --
  function maskLayer(mask, w, h) {
    const layer = document.createElement("canvas");
    layer.width = w; layer.height = h;
    const ctx = layer.getContext("2d"), img = ctx.createImageData(w, h), px = img.data;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      px[4 * i] = MASK_RGB[0]; px[4 * i + 1] = MASK_RGB[1]; px[4 * i + 2] = MASK_RGB[2];
      px[4 * i + 3] = edge ? 255 : 110;
    }
    ctx.putImageData(img, 0, 0);
    return layer;
  }

  function prompt() {
    const points = state.actions.filter((a) => a.kind === "point");
    const boxes = state.actions.filter((a) => a.kind === "box");
    return { points, box: boxes.length ? boxes[boxes.length - 1].box : null };
  }

  function draw() {
    const ctx = overlay.getContext("2d");
    const s = overlay.width / (overlay.getBoundingClientRect().width || overlay.width);  // px per CSS px
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    if (state.mask) ctx.drawImage(state.mask.layer, 0, 0);
    const { points, box } = prompt(), live = state.drag && state.drag.box;
    for (const b of [box, live].filter(Boolean)) {
      ctx.lineWidth = 2 * s;
      ctx.setLineDash(b === live ? [6 * s, 4 * s] : []);
      ctx.strokeStyle = "#ffd400";
      ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    }
    ctx.setLineDash([]);
    for (const p of points) {
      const r = 7 * s;
      ctx.fillStyle = p.label ? "#12b76a" : "#f04438";
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5 * s;
      ctx.beginPath(); ctx.arc(p.x + 0.5, p.y + 0.5, r, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(p.x + 0.5 - r / 2, p.y + 0.5); ctx.lineTo(p.x + 0.5 + r / 2, p.y + 0.5);
      if (p.label) { ctx.moveTo(p.x + 0.5, p.y + 0.5 - r / 2); ctx.lineTo(p.x + 0.5, p.y + 0.5 + r / 2); }
      ctx.stroke();
    }
    const n = state.actions.length, busy = state.answers.length < n;
    $("undo").disabled = $("clear").disabled = !n;
    $("download-png").disabled = $("download-rle").disabled = !state.mask || busy;
  }

  // -- /predict for actions[0..k], sent in order (each needs the previous answer's logits_id) --
  function request(k) {
    const acts = state.actions.slice(0, k + 1);
    const points = acts.filter((a) => a.kind === "point"), boxes = acts.filter((a) => a.kind === "box");
    const p = {};
    if (points.length) { p.points = points.map((a) => [a.x, a.y]); p.labels = points.map((a) => a.label); }
    if (boxes.length) p.box = boxes[boxes.length - 1].box;
    if (k > 0) p.mask_input_id = state.answers[k - 1].predictions[0].logits_id;
    const multimask = points.length === 1 && !boxes.length;
    return { image_id: state.imageId, prompts: [p], multimask, mask_format: "rle" };
  }

  async function sync() {
    if (state.syncing) return;
    state.syncing = true;
    try {
      while (state.answers.length < state.actions.length) {
        const gen = state.gen, k = state.answers.length, req = request(k);
        hook.lastRequest = req;
        setStatus("asking /predict…");
        let res;
        try {
          res = await api("/predict", req);
        } catch (err) {
          if (gen !== state.gen) continue;
          if (!(err.field || "").endsWith("mask_input_id")) throw err;
          delete req.prompts[0].mask_input_id;  // the previous logits expired: start from the points
          res = await api("/predict", req);
        }
        if (gen !== state.gen) continue;  // undone or cleared meanwhile: ask again for what is left
        hook.lastRequest = req;
        hook.lastResponse = res;
        state.requests[k] = req;
        state.answers.push(res);
        const pred = res.predictions[0], rle = pred.masks[pred.best];
        const mask = decodeRle(rle), [h, w] = rle.size;
        state.mask = { rle, bits: mask, layer: maskLayer(mask, w, h), iou: pred.iou[pred.best] };
        draw();
        state.drawn++;
        const t0 = state.actions[k].t0;
        if (t0 !== undefined) requestAnimationFrame(() => hook.latencies.push(performance.now() - t0));
        const area = mask.reduce((a, v) => a + v, 0);
        setStatus(`mask: ${area} px · IoU estimate ${pred.iou[pred.best].toFixed(3)} · ` +
          `${state.actions.length} prompt${state.actions.length > 1 ? "s" : ""}` +
          ` · multimask ${req.multimask ? "on (best of " + pred.masks.length + ")" : "off"}`);
      }
    } catch (err) {
      state.actions.length = state.answers.length;  // drop what got no answer
      draw();
      setStatus(err.message, true);
    } finally {
      state.syncing = false;
    }
  }

  function add(action) {
    if (!state.imageId) return;
    action.t0 = performance.now();
    state.actions.push(action);
    draw();
    sync();
  }

  function undo() {
    if (!state.actions.length) return;
    state.gen++;
    state.actions.pop();
    state.answers.length = Math.max(0, state.actions.length - 1);  // re-ask for the new last one
    state.mask = null;
    for (const a of state.actions) delete a.t0;
    if (!state.actions.length) setStatus("cleared");
    draw();
    sync();
  }

  function clear() {
    state.gen++;
    state.actions = []; state.answers = []; state.requests = []; state.mask = null;
    draw();
    setStatus("cleared");
  }

  // -- image upload: file input or drop --
  async function open(file) {
    if (!file) return;
    clear();
    state.imageId = null;
    setStatus(`embedding ${file.name}…`);
    const body = new FormData();
    body.append("image", file, file.name);
    try {
      const [emb, bitmap] = await Promise.all([api("/embed", body), createImageBitmap(file)]);
      Object.assign(state, { imageId: emb.image_id, width: emb.width, height: emb.height,
        backend: emb.backend, fileName: file.name });
      for (const c of [imageCanvas, overlay]) { c.width = emb.width; c.height = emb.height; }
      imageCanvas.getContext("2d").drawImage(bitmap, 0, 0, emb.width, emb.height);
      stage.classList.remove("empty");
      showBackend(emb.backend);
      clear();
      setStatus(`${file.name}: ${emb.width}×${emb.height}, ${emb.cached ? "embedding cached" : "embedded"}` +
        ". Left click: object · right click: background · drag: box.");
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  $("file").addEventListener("change", (e) => open(e.target.files[0]));
  stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("drag"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("drag"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("drag");
    open(e.dataTransfer.files[0]);
  });

  // -- mouse: click = point, drag (left button) = box; coordinates in original-image pixels --
  function imageXY(e) {
    const r = overlay.getBoundingClientRect();
    const x = Math.floor((e.clientX - r.left) * overlay.width / r.width);
    const y = Math.floor((e.clientY - r.top) * overlay.height / r.height);
    return [Math.min(Math.max(x, 0), overlay.width - 1), Math.min(Math.max(y, 0), overlay.height - 1)];
  }
  overlay.addEventListener("contextmenu", (e) => e.preventDefault());
  overlay.addEventListener("mousedown", (e) => {
    if (e.button === 0 || e.button === 2) state.drag = { button: e.button, start: imageXY(e), cx: e.clientX, cy: e.clientY, box: null };
  });
  overlay.addEventListener("mousemove", (e) => {
    const d = state.drag;
    if (!d || d.button !== 0 || Math.hypot(e.clientX - d.cx, e.clientY - d.cy) < DRAG_PX) return;
    const [x, y] = imageXY(e), [x0, y0] = d.start;
    d.box = [Math.min(x, x0), Math.min(y, y0), Math.max(x, x0) + 1, Math.max(y, y0) + 1];
    draw();
  });
  window.addEventListener("mouseup", (e) => {
    const d = state.drag;
    if (!d || e.button !== d.button) return;
    state.drag = null;
    if (d.box) add({ kind: "box", box: d.box });
    else if (e.target === overlay) add({ kind: "point", x: d.start[0], y: d.start[1], label: d.button === 0 ? 1 : 0 });
    else draw();
  });

  // -- exports --
  async function exportPng() {  // 8-bit grayscale PNG, 0 / 255, at the image's size -> data URL
    const { bits } = state.mask, w = state.width, h = state.height;
    const raw = new Uint8Array(h * (w + 1));  // each row: filter byte 0, then the pixels
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw[y * (w + 1) + 1 + x] = bits[y * w + x] ? 255 : 0;
    const zlib = new Uint8Array(await new Response(new Blob([raw]).stream()
      .pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const ihdr = new Uint8Array(13), dv = new DataView(ihdr.buffer);
    dv.setUint32(0, w); dv.setUint32(4, h); ihdr.set([8, 0, 0, 0, 0], 8);  // 8-bit grayscale
    const png = new Blob([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
      chunk("IHDR", ihdr), chunk("IDAT", zlib), chunk("IEND", new Uint8Array())], { type: "image/png" });
    return new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(png);
    });
  }

  const CRC = Array.from({ length: 256 }, (_, n) => {
    for (let k = 0; k < 8; k++) n = n & 1 ? 0xedb88320 ^ (n >>> 1) : n >>> 1;
    return n >>> 0;
  });
  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length), dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    out.set([...type].map((c) => c.charCodeAt(0)), 4);
    out.set(data, 8);
    let c = 0xffffffff;
    for (const b of out.subarray(4, 8 + data.length)) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
    dv.setUint32(8 + data.length, (c ^ 0xffffffff) >>> 0);
    return out;
  }

  function exportRle() {  // the best mask's RLE exactly as /predict answered it, with its context
    const res = state.answers[state.answers.length - 1], pred = res.predictions[0];
    return { class_name: classInput.value.trim(), file_name: state.fileName,
      width: state.width, height: state.height, image_id: res.image_id, backend: res.backend,
      rle: pred.masks[pred.best], iou: pred.iou[pred.best], stability: pred.stability[pred.best],
      prompt: state.requests[state.answers.length - 1].prompts[0] };
  }

  function download(name, href) {
    const a = document.createElement("a");
    a.href = href; a.download = name;
    document.body.append(a); a.click(); a.remove();
  }
  const stem = () => `${(state.fileName || "image").replace(/\.[^.]*$/, "")}_${classInput.value.trim() || "mask"}`;
  $("download-png").addEventListener("click", async () => download(`${stem()}.png`, await exportPng()));
  $("download-rle").addEventListener("click", () => download(`${stem()}.json`,
    "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(exportRle(), null, 2))));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => { clear(); draw(); });
  window.addEventListener("resize", draw);
  window.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z" && e.target.tagName !== "INPUT") { e.preventDefault(); undo(); }
  });

  // which engine answers, before any image (401 just means: type the key)
  function askInfo() {
    api("/info", {}).then((info) => {
      showBackend(info.backend);
      if (statusLine.classList.contains("error") && !state.imageId) setStatus("Open an image (or drop one below) to start.");
    }).catch((err) => setStatus(err.status === 401 ? "this server needs an API key: type it above" : err.message, true));
  }
  askInfo();
})();
