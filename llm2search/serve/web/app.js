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
  return Object.keys(f).length ? f : null;
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
    setStatus(data.count ? `${data.count} results for ${label} in ${Math.round(data.took_ms)} ms`
                         : `No results for ${label}`);
  } catch (e) {
    if (seq === searchSeq) setStatus(e.message, true);
  }
}

function searchText(text) {
  lastSearch = () => searchText(text);
  const body = { text, k: k() };
  const filter = currentFilter();
  if (filter) body.filter = filter;
  run(jsonRequest("/api/search/text", body), `“${text}”`);
}

function searchSimilar(hit) {
  lastSearch = () => searchSimilar(hit);
  const body = { id: hit.id, k: k() };
  const filter = currentFilter();
  if (filter) body.filter = filter;
  closeViewer();
  run(jsonRequest("/api/search/similar", body), `photos like ${basename(hit.path)}`);
}

function searchImage(file) {
  lastSearch = () => searchImage(file);
  const form = new FormData();
  form.append("image", file);
  form.append("k", String(k()));
  const filter = currentFilter();
  if (filter) form.append("filter", JSON.stringify(filter));
  run({ path: "/api/search/image", options: { method: "POST", body: form } }, `image ${file.name}`);
}

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
    const similar = document.createElement("button");
    similar.className = "similar";
    similar.type = "button";
    similar.textContent = "More like this";
    similar.addEventListener("click", () => searchSimilar(hit));
    info.append(score, name, similar);
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
  $("viewer-meta").textContent = `${hit.width} × ${hit.height} ${hit.format} · ${formatBytes(hit.size)} · `
    + `taken ${taken} · score ${hit.score.toFixed(4)}`;
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
  if (file) searchImage(file);
  $("image-file").value = "";
});
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
