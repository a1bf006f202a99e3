// The llm2search gallery: search by text or image, thumbnails with scores, viewer, more like this.
// Everything goes through the JSON API; with a token, images are fetched with the bearer header.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "llm2search-token";
let token = sessionStorage.getItem(TOKEN_KEY);
let lastSearch = null; // re-run when the filters change or a token is entered
let viewing = null; // the hit shown in the viewer
const objectUrls = [];
let searchSeq = 0; // only the newest search may draw: an older, slower answer is dropped
let queryImage = null; // an uploaded, dropped or pasted image, searched with the text

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("token").focus();
    throw new Error("this server needs a token");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function currentFilter() {
  const f = {};
  const folder = $("f-folder").value.trim();
  if (folder) f.folder = folder;
  if ($("f-after").value) f.after = $("f-after").value;
  if ($("f-before").value) f.before = $("f-before").value;
  if ($("f-type").value) f.types = [$("f-type").value];
  if ($("f-min-width").value) f.min_width = parseInt($("f-min-width").value, 10);
  if ($("f-min-height").value) f.min_height = parseInt($("f-min-height").value, 10);
  if ($("f-min-score").value) f.min_score = parseFloat($("f-min-score").value);
  if ($("f-sort").value !== "score") f.sort = $("f-sort").value;
  if ($("f-camera").value.trim()) f.camera = $("f-camera").value.trim();
  if ($("f-lens").value.trim()) f.lens = $("f-lens").value.trim();
  if ($("f-lat").value && $("f-lon").value && $("f-km").value) {
    f.near = { lat: parseFloat($("f-lat").value), lon: parseFloat($("f-lon").value), km: parseFloat($("f-km").value) };
  }
  return Object.keys(f).length ? f : null;
}

// The search state lives in the URL (?q=…&neg=…&k=…&like=ID&folder=…): bookmarkable, and Back
// and Forward re-run the search they name. An uploaded image cannot live there.
const URL_FIELDS = { folder: "f-folder", after: "f-after", before: "f-before", type: "f-type",
  min_width: "f-min-width", min_height: "f-min-height", min_score: "f-min-score", sort: "f-sort",
  camera: "f-camera", lens: "f-lens", lat: "f-lat", lon: "f-lon", km: "f-km" };

function stateParams(extra) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(extra)) if (value) params.set(key, value);
  if (k() !== 50) params.set("k", String(k()));
  for (const [key, id] of Object.entries(URL_FIELDS)) {
    const v = $(id).value.trim();
    if (v && !(key === "sort" && v === "score")) params.set(key, v);
  }
  return params;
}

function remember(extra) {
  const query = stateParams(extra).toString();
  const target = query ? "?" + query : "";
  if (target !== location.search) history.pushState(null, "", target || location.pathname);
}

function restore() {
  const params = new URLSearchParams(location.search);
  $("q").value = params.get("q") || "";
  $("neg").value = params.get("neg") || "";
  if (params.get("k")) $("k").value = params.get("k");
  let filtered = false;
  for (const [key, id] of Object.entries(URL_FIELDS)) {
    $(id).value = params.get(key) || (key === "sort" ? "score" : "");
    if (params.get(key)) filtered = true;
  }
  if (filtered) { $("filters").hidden = false; $("toggle-filters").setAttribute("aria-expanded", "true"); }
  if (params.get("like")) searchSimilar({ id: params.get("like"), path: params.get("like_name") || params.get("like") }, false);
  else if ($("q").value.trim()) searchText($("q").value.trim(), false);
  else { $("grid").textContent = ""; setStatus(""); }
}

function k() { return parseInt($("k").value, 10); }

function jsonRequest(path, body) {
  return { path, options: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } };
}

async function run(request, label) {
  const seq = ++searchSeq;
  setStatus("Searching…");
  try {
    const response = await api(request.path, request.options);
    const data = await response.json();
    if (seq !== searchSeq) return;
    render(data.hits);
    const cut = data.truncated ? ` (the text was longer than the model's ${data.token_limit}-token limit and was cut)` : "";
    setStatus((data.count ? `${data.count} results for ${label} in ${Math.round(data.took_ms)} ms`
                          : `No results for ${label}`) + cut);
  } catch (e) {
    if (seq === searchSeq) setStatus(e.message, true);
  }
}

function searchText(text, push = true) {
  const negative = $("neg").value.trim();
  if (queryImage) return searchImage(queryImage);
  lastSearch = () => searchText(text, false);
  if (push) remember({ q: text, neg: negative });
  const filter = currentFilter();
  if (negative) {
    const body = { text, negative: [negative], k: k() };
    if (filter) body.filter = filter;
    return run(jsonRequest("/api/query", body), `“${text}” without “${negative}”`);
  }
  const body = { text, k: k() };
  if (filter) body.filter = filter;
  run(jsonRequest("/api/search/text", body), `“${text}”`);
}

function searchSimilar(hit, push = true) {
  lastSearch = () => searchSimilar(hit, false);
  if (push) remember({ like: hit.id, like_name: basename(hit.path) });
  const body = { id: hit.id, k: k() };
  const filter = currentFilter();
  if (filter) body.filter = filter;
  closeViewer();
  run(jsonRequest("/api/search/similar", body), `photos like ${basename(hit.path)}`);
}

function setQueryImage(file) {
  queryImage = file;
  $("image-chip").hidden = !file;
  $("image-name").textContent = file ? file.name || "pasted image" : "";
  if (file) searchImage(file);
}

async function searchImage(file) {
  lastSearch = () => searchImage(file);
  const text = $("q").value.trim();
  const negative = $("neg").value.trim();
  const filter = currentFilter();
  const name = file.name || "pasted image";
  if (!text && !negative) {
    const form = new FormData();
    form.append("image", file);
    form.append("k", String(k()));
    if (filter) form.append("filter", JSON.stringify(filter));
    return run({ path: "/api/search/image", options: { method: "POST", body: form } }, `image ${name}`);
  }
  // Text and image together: one weighted query vector (the CLI's --image-weight / --negative).
  const body = { image: await base64(file), image_weight: parseFloat($("image-weight").value || "1"), k: k() };
  if (text) body.text = text;
  if (negative) body.negative = [negative];
  if (filter) body.filter = filter;
  run(jsonRequest("/api/query", body), `image ${name}` + (text ? ` + “${text}”` : "") + (negative ? ` without “${negative}”` : ""));
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function formatDate(seconds) { return new Date(seconds * 1000).toISOString().slice(0, 10); }

function render(hits) {
  for (const url of objectUrls.splice(0)) URL.revokeObjectURL(url);
  const grid = $("grid");
  grid.textContent = "";
  for (const hit of hits) {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.id = hit.id;
    const thumb = document.createElement("button");
    thumb.className = "thumb";
    thumb.type = "button";
    thumb.title = hit.path;
    const img = document.createElement("img");
    img.alt = basename(hit.path);
    img.loading = "lazy";
    setImage(img, hit.thumbnail + "?size=256");
    thumb.appendChild(img);
    thumb.addEventListener("click", () => openViewer(hit));
    const info = document.createElement("figcaption");
    info.className = "info";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = basename(hit.path);
    name.title = hit.path;
    const date = document.createElement("time");
    date.className = "date";
    date.dateTime = new Date(hit.taken * 1000).toISOString();
    date.textContent = formatDate(hit.taken);
    date.title = hit.exif_time != null ? "taken (EXIF)" : "file modified (no EXIF date)";
    const similar = document.createElement("button");
    similar.className = "similar";
    similar.type = "button";
    similar.textContent = "More like this";
    similar.addEventListener("click", () => searchSimilar(hit));
    info.append(name, score, date, similar);
    card.append(thumb, info);
    grid.appendChild(card);
  }
}

async function setImage(img, url) {
  if (!token) { img.src = url; return; }
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (e) { img.alt = "(" + e.message + ")"; }
}

function openViewer(hit) {
  viewing = hit;
  setImage($("viewer-img"), hit.image);
  $("viewer-img").alt = basename(hit.path);
  $("viewer-path").textContent = hit.path;
  const taken = new Date(hit.taken * 1000).toISOString().slice(0, 16).replace("T", " ");
  const camera = [hit.camera_model, hit.lens].filter(Boolean).join(" · ");
  const place = hit.gps_lat != null ? ` · at ${hit.gps_lat.toFixed(4)}, ${hit.gps_lon.toFixed(4)}` : "";
  $("viewer-meta").textContent = `${hit.width} × ${hit.height} ${hit.format} · ${formatBytes(hit.size)} · `
    + `taken ${taken} · score ${hit.score.toFixed(4)}` + (camera ? ` · ${camera}` : "") + place;
  $("viewer-open").href = token ? "#" : hit.image;
  $("viewer-open").hidden = Boolean(token);
  $("viewer").hidden = false;
}

function closeViewer() { $("viewer").hidden = true; viewing = null; }

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function basename(path) { return path.split(/[\\/]/).pop(); }

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) searchText(text);
  else setStatus("Type what the photo shows, in English or Chinese.", true);
});
$("image-file").addEventListener("change", () => {
  const file = $("image-file").files[0];
  if (file) setQueryImage(file);
  $("image-file").value = "";
});
$("image-clear").addEventListener("click", () => {
  setQueryImage(null);
  const text = $("q").value.trim();
  if (text) searchText(text);
});
$("image-weight").addEventListener("change", () => { if (queryImage) searchImage(queryImage); });
// Drag and drop, or paste, an image anywhere on the page to search by it.
let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if ([...(event.dataTransfer?.types || [])].includes("Files")) { dragDepth++; $("drop-hint").hidden = false; }
});
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-hint").hidden = true; } });
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("drop-hint").hidden = true;
  const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/") || !f.type);
  if (file) setQueryImage(file);
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (!item) return;
  event.preventDefault();
  setQueryImage(item.getAsFile());
});
window.addEventListener("popstate", restore);
restore();
$("toggle-filters").addEventListener("click", () => {
  const panel = $("filters");
  panel.hidden = !panel.hidden;
  $("toggle-filters").setAttribute("aria-expanded", String(!panel.hidden));
});
$("filters").addEventListener("change", () => { if (lastSearch) lastSearch(); });
$("filters").addEventListener("submit", (event) => event.preventDefault());
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim() || null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("token-form").hidden = true;
  if (lastSearch) lastSearch();
});
$("viewer-close").addEventListener("click", closeViewer);
$("viewer-similar").addEventListener("click", () => { if (viewing) searchSimilar(viewing); });
$("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeViewer(); });
