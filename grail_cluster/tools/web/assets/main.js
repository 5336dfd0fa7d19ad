// GRAIL motion viewer: a windowed card grid over manifest.json (plain JS, no dependencies).
//
// - Data is held column-wise in plain arrays; every filter/search/sort change is one O(n) pass over a
//   precomputed sort order, done synchronously on input (no debounce).
// - Only the cards in (and just around) the viewport exist in the DOM; they are recycled on scroll.
// - Everything from the manifest is untrusted: the DOM is built with createElement/textContent only.
// - The filter/sort/search state (and the open motion) live in the query string.
"use strict";

(() => {
  const MIN_CARD_W = 240;
  const GAP = 12;
  const INFO_H = 66;
  const OVERSCAN_ROWS = 2;
  const THUMB_DELAY_MS = 120; // let fast scrolling settle before videos start loading
  const URL_DELAY_MS = 250; // see scheduleURL
  const METRICS = {
    obj_pos_error: ["obj pos error", "m"],
    obj_ori_error: ["obj ori error", "rad"],
    mpjpe_g: ["MPJPE g", "mm"],
    mpjpe_l: ["MPJPE l", "mm"],
    progress: ["progress", ""],
  };
  const SORTS = ["name", "frames", ...Object.keys(METRICS)];
  const NONE = "__none__";
  const DEFAULTS = { q: "", obj: "", ok: "", fmin: "", fmax: "", pmin: "", pmax: "", jk: "mpjpe_g", jmin: "", jmax: "", sort: "name", dir: "asc" };

  const $ = (id) => document.getElementById(id);
  const ui = {
    title: $("title"), counts: $("counts"), headline: $("headline"), status: $("status"), scroller: $("scroller"), spacer: $("spacer"),
    grid: $("grid"), form: $("filters"), q: $("q"), obj: $("obj"), ok: $("ok"), fmin: $("fmin"), fmax: $("fmax"),
    pmin: $("pmin"), pmax: $("pmax"), jk: $("jk"), jmin: $("jmin"), jmax: $("jmax"), sort: $("sort"), dir: $("dir"),
    reset: $("reset"), detail: $("detail"), dName: $("d-name"), dVideo: $("d-video"), dNoVideo: $("d-novideo"),
    dMeta: $("d-meta").tBodies[0], dPrev: $("d-prev"), dNext: $("d-next"), dClose: $("d-close"),
  };

  let manifest = null;
  let motions = [];
  let N = 0;
  // Columns.
  let lname = [];
  let objCode = null;
  let okCode = null; // 1 success, 0 failed, -1 unknown
  let frames = null;
  const metric = {};
  let objects = []; // distinct object names, sorted
  const orders = new Map(); // sort key -> {vals: Int32Array (ascending, non-null), nulls: Int32Array}

  const state = { ...DEFAULTS };
  let filtered = new Int32Array(0);
  let selected = -1; // motion index
  let openMotion = -1; // motion index shown in the detail view
  // Layout.
  let cols = 1;
  let cardW = MIN_CARD_W;
  let rowH = 200;
  // Windowing.
  const shown = new Map(); // motion index -> card
  const pool = [];
  let renderQueued = false;
  let thumbTimer = 0;

  // ------------------------------------------------------------------ formatting helpers
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits = 3) => (isNum(v) ? v.toFixed(digits) : "–");
  const text = (v) => (v === null || v === undefined ? "–" : typeof v === "string" ? v : JSON.stringify(v));
  // Only same-site relative paths are used as URLs (no "javascript:", no other origin).
  const safeRel = (p) => (typeof p === "string" && p.length > 0 && !/^[a-z][a-z0-9+.-]*:|^[\/\\]/i.test(p) ? p : null);
  const el = (tag, cls, content) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = content;
    return e;
  };
  const numOrNaN = (s) => (s === "" || s === null ? NaN : Number(s));

  // ------------------------------------------------------------------ loading
  function load() {
    fetch("manifest.json", { cache: "no-store" })
      .then((r) => {
        if (!r.ok) throw new Error(`manifest.json: HTTP ${r.status}`);
        return r.json();
      })
      .then(init)
      .catch((err) => {
        ui.status.hidden = false;
        ui.status.className = "status error";
        ui.status.textContent = `Could not load the library: ${err.message}\n` +
          "Serve this directory over HTTP, e.g. `grail-cluster serve <dir>` (file:// cannot fetch manifest.json).";
      });
  }

  function init(data) {
    manifest = data && typeof data === "object" ? data : {};
    motions = Array.isArray(manifest.motions) ? manifest.motions.filter((m) => m && typeof m === "object") : [];
    N = motions.length;
    const title = typeof manifest.title === "string" && manifest.title ? manifest.title : "Motion library";
    ui.title.textContent = title;
    document.title = title;
    showHeadline(manifest.headline);
    const open = new URLSearchParams(location.search).get("m"); // read before the URL is rewritten
    buildColumns();
    buildObjectOptions();
    readURL();
    writeControls();
    ui.status.hidden = true;
    relayout();
    applyFilter({ keepScroll: true });
    if (open !== null) {
      const i = motions.findIndex((m) => m.name === open);
      if (i >= 0) openDetail(i);
    }
    document.body.dataset.ready = "1";
    window.dispatchEvent(new Event("grail:ready"));
  }

  function buildColumns() {
    lname = new Array(N);
    objCode = new Int32Array(N);
    okCode = new Int8Array(N);
    frames = new Float64Array(N);
    for (const k of Object.keys(METRICS)) metric[k] = new Float64Array(N);
    const objIndex = new Map();
    const names = [];
    for (let i = 0; i < N; i++) {
      const m = motions[i];
      const name = typeof m.name === "string" ? m.name : String(m.name);
      m.name = name;
      lname[i] = name.toLowerCase();
      const o = typeof m.object === "string" && m.object ? m.object
        : (m.meta && typeof m.meta.object_name === "string" && m.meta.object_name ? m.meta.object_name : null);
      m._object = o;
      if (o === null) objCode[i] = -1;
      else {
        let c = objIndex.get(o);
        if (c === undefined) {
          c = names.length;
          objIndex.set(o, c);
          names.push(o);
        }
        objCode[i] = c;
      }
      okCode[i] = m.success === true ? 1 : m.success === false ? 0 : -1;
      frames[i] = isNum(m.frames) ? m.frames : NaN;
      for (const k of Object.keys(METRICS)) metric[k][i] = isNum(m[k]) ? m[k] : NaN;
    }
    // Object codes in sorted-name order (for the dropdown); remap the column once.
    const sorted = names.map((n, c) => [n, c]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const remap = new Int32Array(names.length);
    sorted.forEach(([, c], j) => { remap[c] = j; });
    for (let i = 0; i < N; i++) if (objCode[i] >= 0) objCode[i] = remap[objCode[i]];
    objects = sorted.map(([n]) => n);
    orders.clear();
  }

  function buildObjectOptions() {
    const counts = new Int32Array(objects.length);
    let none = 0;
    for (let i = 0; i < N; i++) {
      if (objCode[i] >= 0) counts[objCode[i]]++;
      else none++;
    }
    const frag = document.createDocumentFragment();
    frag.appendChild(el("option", null, "all")).value = "";
    objects.forEach((o, c) => {
      const opt = el("option", null, `${o} (${counts[c]})`);
      opt.value = o;
      frag.appendChild(opt);
    });
    if (none) frag.appendChild(el("option", null, `(no object) (${none})`)).value = NONE;
    ui.obj.replaceChildren(frag);
  }

  function column(key) {
    return key === "frames" ? frames : metric[key];
  }

  function orderFor(key) {
    let o = orders.get(key);
    if (o) return o;
    if (key === "name") {
      const idx = Array.from({ length: N }, (_, i) => i);
      let sorted = true;
      for (let i = 1; i < N && sorted; i++) sorted = motions[i - 1].name <= motions[i].name;
      if (!sorted) idx.sort((a, b) => (motions[a].name < motions[b].name ? -1 : motions[a].name > motions[b].name ? 1 : 0));
      o = { vals: Int32Array.from(idx), nulls: new Int32Array(0) };
    } else {
      const col = column(key);
      const vals = [];
      const nulls = [];
      for (let i = 0; i < N; i++) (Number.isNaN(col[i]) ? nulls : vals).push(i);
      vals.sort((a, b) => col[a] - col[b] || a - b);
      o = { vals: Int32Array.from(vals), nulls: Int32Array.from(nulls) };
    }
    orders.set(key, o);
    return o;
  }

  // ------------------------------------------------------------------ state <-> URL and controls
  function readURL() {
    const p = new URLSearchParams(location.search);
    for (const k of Object.keys(DEFAULTS)) {
      const v = p.get(k);
      if (v !== null) state[k] = v;
    }
    if (!SORTS.includes(state.sort)) state.sort = "name";
    if (state.dir !== "desc") state.dir = "asc";
    if (!["mpjpe_g", "mpjpe_l"].includes(state.jk)) state.jk = "mpjpe_g";
    if (!["", "1", "0", "u"].includes(state.ok)) state.ok = "";
  }

  // history.replaceState costs milliseconds in Chromium (a round trip to the browser process), so
  // while typing the URL is written once the keystrokes pause; discrete actions write it at once.
  let urlTimer = 0;
  function scheduleURL() {
    clearTimeout(urlTimer);
    urlTimer = setTimeout(writeURL, URL_DELAY_MS);
  }

  function writeURL() {
    clearTimeout(urlTimer);
    urlTimer = 0;
    const p = new URLSearchParams();
    for (const [k, def] of Object.entries(DEFAULTS)) if (state[k] !== def && state[k] !== "") p.set(k, state[k]);
    if (openMotion >= 0) p.set("m", motions[openMotion].name);
    const qs = p.toString();
    const url = location.pathname + (qs ? `?${qs}` : "") + location.hash;
    if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
  }

  function writeControls() {
    for (const k of ["q", "fmin", "fmax", "pmin", "pmax", "jmin", "jmax"]) ui[k].value = state[k];
    ui.ok.value = state.ok;
    ui.jk.value = state.jk;
    ui.sort.value = state.sort;
    if (state.obj && !Array.from(ui.obj.options).some((o) => o.value === state.obj)) {
      const opt = el("option", null, `${state.obj} (0)`); // keep a shared filter visible even if absent here
      opt.value = state.obj;
      ui.obj.appendChild(opt);
    }
    ui.obj.value = state.obj;
    ui.dir.textContent = state.dir === "asc" ? "▲ asc" : "▼ desc";
  }

  function readControls() {
    for (const k of ["q", "obj", "ok", "fmin", "fmax", "pmin", "pmax", "jk", "jmin", "jmax", "sort"]) state[k] = ui[k].value;
  }

  // ------------------------------------------------------------------ filtering (one O(n) pass)
  function applyFilter({ keepScroll = false } = {}) {
    const q = state.q.trim().toLowerCase();
    let objC = -2;
    if (state.obj === NONE) objC = -1;
    else if (state.obj) {
      const c = objects.indexOf(state.obj);
      objC = c >= 0 ? c : -3; // unknown object: nothing matches
    }
    const okF = state.ok === "1" ? 1 : state.ok === "0" ? 0 : state.ok === "u" ? -1 : 9;
    const fLo = numOrNaN(state.fmin), fHi = numOrNaN(state.fmax);
    const pLo = numOrNaN(state.pmin), pHi = numOrNaN(state.pmax);
    const jLo = numOrNaN(state.jmin), jHi = numOrNaN(state.jmax);
    const useF = !Number.isNaN(fLo) || !Number.isNaN(fHi);
    const useP = !Number.isNaN(pLo) || !Number.isNaN(pHi);
    const useJ = !Number.isNaN(jLo) || !Number.isNaN(jHi);
    const fA = Number.isNaN(fLo) ? -Infinity : fLo, fB = Number.isNaN(fHi) ? Infinity : fHi;
    const pA = Number.isNaN(pLo) ? -Infinity : pLo, pB = Number.isNaN(pHi) ? Infinity : pHi;
    const jA = Number.isNaN(jLo) ? -Infinity : jLo, jB = Number.isNaN(jHi) ? Infinity : jHi;
    const pos = metric.obj_pos_error;
    const mp = metric[state.jk];
    const { vals, nulls } = orderFor(state.sort);
    const out = new Int32Array(N);
    let k = 0;
    const test = (i) => {
      if (q && lname[i].indexOf(q) === -1) return false;
      if (objC !== -2 && objCode[i] !== objC) return false;
      if (okF !== 9 && okCode[i] !== okF) return false;
      if (useF) { const v = frames[i]; if (!(v >= fA && v <= fB)) return false; }
      if (useP) { const v = pos[i]; if (!(v >= pA && v <= pB)) return false; }
      if (useJ) { const v = mp[i]; if (!(v >= jA && v <= jB)) return false; }
      return true;
    };
    if (state.dir === "desc") {
      for (let j = vals.length - 1; j >= 0; j--) if (test(vals[j])) out[k++] = vals[j];
    } else {
      for (let j = 0; j < vals.length; j++) if (test(vals[j])) out[k++] = vals[j];
    }
    for (let j = 0; j < nulls.length; j++) if (test(nulls[j])) out[k++] = nulls[j]; // unknown values last
    filtered = out.subarray(0, k);
    if (filtered.indexOf(selected) === -1) selected = k ? filtered[0] : -1;
    updateCounts();
    ui.spacer.style.height = `${Math.max(0, Math.ceil(k / cols) * rowH - GAP)}px`;
    if (!keepScroll) ui.scroller.scrollTop = 0;
    scheduleURL();
    render();
  }

  // The checkpoint's eval over every shard (manifest.headline, written by the generator from the
  // shards' metrics_eval.json): a merged library holds only successes, so its own counts say 100%.
  const count = (v) => (Number.isInteger(v) && v >= 0 ? String(v) : "–");
  function headlineText(h) {
    const rate = isNum(h.success_rate) ? `${(100 * h.success_rate).toFixed(1)}%` : "–";
    let s = `checkpoint${Number.isInteger(h.step) ? ` step ${h.step}` : ""}: evaluated ${count(h.evaluated)} · ` +
      `succeeded ${count(h.succeeded)}/${count(h.evaluated)} = ${rate} · exported ${count(h.exported)} · ` +
      `${count(h.shards_ok)}/${count(h.num_shards)} eval shards`;
    if (h.partial !== false) {
      s += ` · PARTIAL: the rate covers ${count(h.shards_ok)} of ${count(h.num_shards)} shards only`;
    }
    return s;
  }
  function showHeadline(h) {
    if (!h || typeof h !== "object") return;
    ui.headline.textContent = headlineText(h);
    ui.headline.classList.toggle("partial", h.partial !== false);
    ui.headline.hidden = false;
  }

  function updateCounts() {
    let ok = 0, fail = 0, vid = 0;
    for (let j = 0; j < filtered.length; j++) {
      const i = filtered[j];
      if (okCode[i] === 1) ok++;
      else if (okCode[i] === 0) fail++;
      if (motions[i].video) vid++;
    }
    const known = ok + fail;
    // With a headline, a rate over this library's own motions would contradict it (they are the exported
    // successes): show the counts only.
    const rate = manifest.headline ? `${ok} success, ${fail} failed shown`
      : known ? `success ${(100 * ok / known).toFixed(1)}% (${ok}/${known})` : "success –";
    ui.counts.textContent = `${filtered.length} of ${N} motions · ${rate} · ${vid} with video`;
  }

  // ------------------------------------------------------------------ layout and windowed rendering
  function relayout() {
    const width = Math.max(MIN_CARD_W, ui.scroller.clientWidth - 2 * GAP);
    cols = Math.max(1, Math.floor((width + GAP) / (MIN_CARD_W + GAP)));
    cardW = Math.floor((width - GAP * (cols - 1)) / cols);
    const thumbH = Math.round(cardW * 9 / 16);
    rowH = thumbH + INFO_H + GAP;
    ui.grid.style.setProperty("--card-w", `${cardW}px`);
    ui.grid.style.setProperty("--card-h", `${thumbH + INFO_H}px`);
    ui.grid.style.setProperty("--thumb-h", `${thumbH}px`);
    ui.spacer.style.height = `${Math.max(0, Math.ceil(filtered.length / cols) * rowH - GAP)}px`;
  }

  function makeCard() {
    const card = el("div", "card");
    card.setAttribute("role", "option");
    const thumb = card.appendChild(el("div", "thumb"));
    const video = thumb.appendChild(el("video"));
    video.muted = true;
    video.defaultMuted = true;
    video.loop = true;
    video.playsInline = true;
    video.preload = "metadata";
    thumb.appendChild(el("span", "novideo", "no video"));
    thumb.appendChild(el("span", "badge"));
    const info = card.appendChild(el("div", "info"));
    info.appendChild(el("div", "name"));
    info.appendChild(el("div", "sub"));
    info.appendChild(el("div", "nums"));
    card.addEventListener("mouseenter", () => playCard(card));
    card.addEventListener("mouseleave", () => { if (card._motion !== selected || !card._kbd) pauseCard(card); });
    card.addEventListener("click", () => {
      select(card._motion, { scroll: false });
      openDetail(card._motion);
    });
    ui.grid.appendChild(card);
    return card;
  }

  function fillCard(card, i) {
    const m = motions[i];
    card._motion = i;
    card._kbd = false;
    const [thumb, info] = card.children;
    const video = thumb.children[0];
    if (video.getAttribute("src") !== null) {
      // No video.load() here: resetting a media element costs ~1 ms, too much for 40 cards on every
      // keystroke. The hidden element keeps its old frame until ensureSrc gives it the new video.
      if (!video.paused) video.pause();
      video.removeAttribute("src");
    }
    const src = safeRel(m.video);
    card._src = src;
    video.hidden = true;
    thumb.children[1].hidden = !!src;
    const badge = thumb.children[2];
    badge.className = `badge ${okCode[i] === 1 ? "ok" : okCode[i] === 0 ? "fail" : "unknown"}`;
    badge.textContent = okCode[i] === 1 ? "success" : okCode[i] === 0 ? "failed" : "?";
    info.children[0].textContent = m.name;
    info.children[0].title = m.name;
    const sub = [m._object || "no object", isNum(m.frames) ? `${m.frames} frames` : "? frames"];
    if (isNum(m.step)) sub.push(`step ${m.step}`);
    if (isNum(m.shard)) sub.push(`shard ${m.shard}`);
    info.children[1].textContent = sub.join(" · ");
    fillNums(card);
  }

  // The card's number line: obj pos error and the metric being sorted by (else the MPJPE chosen).
  const numsKey = () => (state.sort in METRICS && state.sort !== "obj_pos_error" ? state.sort : state.jk);

  function fillNums(card) {
    const m = motions[card._motion];
    const key = numsKey();
    card._nums = key;
    const [label, unit] = METRICS[key];
    card.children[1].children[2].textContent = `pos ${fmt(m.obj_pos_error)} m · ${label} ${fmt(m[key])}${unit ? " " + unit : ""}`;
  }

  function ensureSrc(card) {
    const video = card.children[0].children[0];
    if (card._src && video.getAttribute("src") === null) {
      video.src = card._src;
      video.hidden = false;
    }
    return video;
  }

  function playCard(card) {
    if (!card._src) return;
    const video = ensureSrc(card);
    const p = video.play();
    if (p && p.catch) p.catch(() => {});
  }

  function pauseCard(card) {
    const video = card.children[0].children[0];
    if (!video.paused) video.pause();
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    const top = ui.scroller.scrollTop - GAP;
    const h = ui.scroller.clientHeight || window.innerHeight;
    const firstRow = Math.max(0, Math.floor(top / rowH) - OVERSCAN_ROWS);
    const lastRow = Math.ceil((top + h) / rowH) + OVERSCAN_ROWS;
    const from = Math.min(filtered.length, firstRow * cols);
    const to = Math.min(filtered.length, lastRow * cols);
    const need = new Set();
    for (let p = from; p < to; p++) need.add(filtered[p]);
    for (const [i, card] of shown) {
      if (!need.has(i)) {
        shown.delete(i);
        pauseCard(card);
        card.hidden = true;
        card.classList.remove("selected");
        pool.push(card);
      }
    }
    for (let p = from; p < to; p++) {
      const i = filtered[p];
      let card = shown.get(i);
      if (!card) {
        card = pool.pop() || makeCard();
        fillCard(card, i);
        shown.set(i, card);
        card.hidden = false;
      } else if (card._nums !== numsKey()) fillNums(card);
      card.dataset.pos = String(p);
      card.style.transform = `translate(${(p % cols) * (cardW + GAP)}px, ${Math.floor(p / cols) * rowH}px)`;
      const sel = i === selected;
      card.classList.toggle("selected", sel);
      card.setAttribute("aria-selected", sel ? "true" : "false");
    }
    clearTimeout(thumbTimer);
    thumbTimer = setTimeout(loadThumbs, THUMB_DELAY_MS);
  }

  function loadThumbs() {
    const top = ui.scroller.scrollTop, bottom = top + ui.scroller.clientHeight;
    for (const card of shown.values()) {
      const y = Math.floor(Number(card.dataset.pos) / cols) * rowH;
      if (y + rowH >= top && y <= bottom) ensureSrc(card);
    }
  }

  // ------------------------------------------------------------------ selection and keyboard
  function select(i, { scroll = true, kbd = false } = {}) {
    if (i < 0) return;
    const prev = shown.get(selected);
    if (prev && prev._kbd) { prev._kbd = false; pauseCard(prev); }
    selected = i;
    if (scroll) {
      const p = filtered.indexOf(i);
      const y = Math.floor(p / cols) * rowH;
      const top = ui.scroller.scrollTop, h = ui.scroller.clientHeight;
      if (y < top) ui.scroller.scrollTop = y;
      else if (y + rowH > top + h) ui.scroller.scrollTop = y + rowH - h + GAP;
    }
    render();
    const card = shown.get(i);
    if (card && kbd) { card._kbd = true; playCard(card); }
  }

  function move(delta) {
    if (!filtered.length) return;
    let p = filtered.indexOf(selected);
    p = p < 0 ? 0 : Math.max(0, Math.min(filtered.length - 1, p + delta));
    select(filtered[p], { kbd: true });
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (ui.detail.open) {
      if (e.key === "Escape") { e.preventDefault(); closeDetail(); }
      else if (e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); stepDetail(1); }
      else if (e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); stepDetail(-1); }
      return;
    }
    const t = e.target;
    const typing = t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
    if (typing) {
      if (e.key === "Escape") { t.blur(); ui.scroller.focus({ preventScroll: true }); }
      else if (e.key === "ArrowDown" && t === ui.q) { e.preventDefault(); t.blur(); ui.scroller.focus({ preventScroll: true }); move(0); }
      return;
    }
    if (t instanceof HTMLButtonElement && (e.key === "Enter" || e.key === " ")) return;
    switch (e.key) {
      case "/": e.preventDefault(); ui.q.focus(); ui.q.select(); break;
      case "ArrowRight": e.preventDefault(); move(1); break;
      case "ArrowLeft": e.preventDefault(); move(-1); break;
      case "ArrowDown": e.preventDefault(); move(cols); break;
      case "ArrowUp": e.preventDefault(); move(-cols); break;
      case "PageDown": e.preventDefault(); move(cols * Math.max(1, Math.floor(ui.scroller.clientHeight / rowH))); break;
      case "PageUp": e.preventDefault(); move(-cols * Math.max(1, Math.floor(ui.scroller.clientHeight / rowH))); break;
      case "Home": e.preventDefault(); move(-filtered.length); break;
      case "End": e.preventDefault(); move(filtered.length); break;
      case "Enter": if (selected >= 0) { e.preventDefault(); openDetail(selected); } break;
      default: break;
    }
  });

  // ------------------------------------------------------------------ detail view
  function row(label, value, cls) {
    const tr = el("tr");
    tr.appendChild(el("th", null, label));
    tr.appendChild(el("td", cls || null, value));
    return tr;
  }

  const vec = (v) => (Array.isArray(v) ? `[${v.map((x) => (isNum(x) ? x.toFixed(3) : text(x))).join(", ")}]` : text(v));
  const KNOWN = new Set(["name", "frames", "video", "meta", "object", "success", "terminated", "terminate_reason", "step",
    "shard", "env_idx", "fps", "error", "_object", ...Object.keys(METRICS)]);

  function openDetail(i) {
    if (i < 0 || i >= N) return;
    const m = motions[i];
    openMotion = i;
    ui.dName.textContent = m.name;
    const src = safeRel(m.video);
    ui.dVideo.hidden = !src;
    ui.dNoVideo.hidden = !!src;
    if (src) {
      if (ui.dVideo.getAttribute("src") !== src) ui.dVideo.src = src;
      const p = ui.dVideo.play();
      if (p && p.catch) p.catch(() => {});
    } else if (ui.dVideo.getAttribute("src") !== null) {
      ui.dVideo.removeAttribute("src");
      ui.dVideo.load();
    }
    const rows = document.createDocumentFragment();
    const res = m.success === true ? ["success", "ok"] : m.success === false ? ["failed", "fail"] : ["unknown", null];
    rows.appendChild(row("result", res[0] + (m.terminate_reason ? ` (${text(m.terminate_reason)})` : ""), res[1]));
    rows.appendChild(row("object", text(m._object)));
    rows.appendChild(row("terminated", text(m.terminated)));
    for (const [k, [label, unit]] of Object.entries(METRICS)) rows.appendChild(row(label, isNum(m[k]) ? `${fmt(m[k])}${unit ? " " + unit : ""}` : "–"));
    rows.appendChild(row("frames", isNum(m.frames) ? String(m.frames) : "–"));
    rows.appendChild(row("fps", isNum(m.fps) ? fmt(m.fps, 2) : "–"));
    if (isNum(m.frames) && isNum(m.fps) && m.fps > 0) rows.appendChild(row("duration", `${(m.frames / m.fps).toFixed(2)} s`));
    rows.appendChild(row("step", text(m.step)));
    rows.appendChild(row("shard", text(m.shard)));
    rows.appendChild(row("env index", text(m.env_idx)));
    const meta = m.meta && typeof m.meta === "object" ? m.meta : {};
    const conv = typeof manifest.table_quat_convention === "string" ? ` (${manifest.table_quat_convention})` : "";
    for (const [k, v] of Object.entries(meta)) rows.appendChild(row(k === "table_quat" ? `meta ${k}${conv}` : `meta ${k}`, vec(v)));
    for (const [k, v] of Object.entries(m)) if (!KNOWN.has(k)) rows.appendChild(row(k, vec(v)));
    rows.appendChild(row("video", src || "–"));
    if (m.error) rows.appendChild(row("error", text(m.error), "fail"));
    ui.dMeta.replaceChildren(rows);
    if (!ui.detail.open) ui.detail.showModal();
    writeURL();
  }

  function stepDetail(delta) {
    const p = filtered.indexOf(openMotion);
    if (p < 0) return;
    const q = p + delta;
    if (q < 0 || q >= filtered.length) return;
    select(filtered[q]);
    openDetail(filtered[q]);
  }

  function closeDetail() {
    if (ui.detail.open) ui.detail.close();
    onDetailClosed();
  }

  function onDetailClosed() { // idempotent: runs at once from closeDetail, and again from the "close" event
    if (openMotion === -1) return;
    ui.dVideo.pause();
    openMotion = -1;
    writeURL();
    ui.scroller.focus({ preventScroll: true });
  }

  ui.detail.addEventListener("close", onDetailClosed);
  ui.detail.addEventListener("click", (e) => { if (e.target === ui.detail) closeDetail(); }); // backdrop
  ui.dClose.addEventListener("click", closeDetail);
  ui.dPrev.addEventListener("click", () => stepDetail(-1));
  ui.dNext.addEventListener("click", () => stepDetail(1));

  // ------------------------------------------------------------------ wiring
  ui.form.addEventListener("submit", (e) => e.preventDefault());
  // "input" fires on every keystroke and on every <select> change: filter at once, no debounce.
  ui.form.addEventListener("input", () => { readControls(); applyFilter(); });
  ui.dir.addEventListener("click", () => {
    state.dir = state.dir === "asc" ? "desc" : "asc";
    ui.dir.textContent = state.dir === "asc" ? "▲ asc" : "▼ desc";
    applyFilter();
  });
  ui.reset.addEventListener("click", () => {
    Object.assign(state, DEFAULTS);
    writeControls();
    applyFilter();
  });
  ui.scroller.addEventListener("scroll", scheduleRender, { passive: true });
  window.addEventListener("pagehide", () => { if (urlTimer) writeURL(); });
  new ResizeObserver(() => {
    relayout();
    render();
  }).observe(ui.scroller);

  // A read-only hook for tests and benchmarks.
  window.grailViewer = {
    filteredNames: () => Array.from(filtered, (i) => motions[i].name),
    count: () => filtered.length,
    total: () => N,
    state: () => ({ ...state }),
    selected: () => (selected >= 0 ? motions[selected].name : null),
    columns: () => cols,
  };

  load();
})();
