// The page: options from GET /v1/models, photos in (drop, file dialog, paste), one /predict call per photo.
import { api, ApiError, onKeyNeeded } from "./api.js";
import { el, renderResult } from "./render.js";

const $ = (id) => document.getElementById(id);
const form = { model: $("model"), version: $("version"), crops: $("crops"), topK: $("top-k") };
const results = $("results");
const status = $("status");
const cards = []; // {file, node, run}: every photo shown, so a change of options classifies them again
let models = new Map(); // name → READY versions, newest first

// -- the API key form (opened by api.js when a call answers 401) ---------------------------------------------
onKeyNeeded((message) => new Promise((resolve) => {
  const dialog = $("auth");
  const input = $("auth-key");
  $("auth-message").textContent = message;
  input.value = "";
  const done = (key) => {
    dialog.removeEventListener("close", cancelled);
    dialog.close();
    resolve(key);
  };
  const cancelled = () => done(null);
  dialog.querySelector("form").onsubmit = (event) => {
    event.preventDefault();
    done(event.submitter?.value === "cancel" ? null : input.value.trim() || null);
  };
  dialog.addEventListener("close", cancelled);
  dialog.showModal();
  input.focus();
}));

// -- models and options -------------------------------------------------------------------------------------
async function loadModels() {
  status.textContent = "Loading the list of models…";
  let listing;
  try {
    listing = await api("/v1/models");
  } catch (error) {
    status.textContent = `The models could not be listed: ${error.message}`;
    if (error.status === 503 || error.status === 0) setTimeout(loadModels, 2000);
    return;
  }
  models = new Map();
  for (const v of listing.models.filter((m) => m.state === "READY").sort((a, b) => b.version - a.version)) {
    if (!models.has(v.name)) models.set(v.name, []);
    models.get(v.name).push(v);
  }
  if (models.size === 0) {
    status.textContent = "No model is ready yet; the service may still be loading. Trying again…";
    setTimeout(loadModels, 2000);
    return;
  }
  const keep = form.model.value;
  form.model.replaceChildren(...[...models.keys()].map((name) => el("option", { value: name }, name)));
  if (models.has(keep)) form.model.value = keep;
  modelChanged();
  status.textContent = "Ready: drop a photo.";
}

function modelChanged() {
  const versions = models.get(form.model.value) || [];
  form.version.replaceChildren(
    el("option", { value: "" }, `newest (${versions[0]?.version ?? "?"})`),
    ...versions.map((v) => el("option", { value: String(v.version) }, String(v.version))));
  const newest = versions[0];
  if (newest) {
    const classes = newest.num_classes;
    form.topK.max = String(classes);
    form.topK.value = String(Math.min(Math.max(1, Number(form.topK.value) || 5), classes));
    form.crops.value = newest.metadata?.preprocessing?.crops || "ten";
  }
  showModel();
}

// -- what the chosen version is: where its weights came from, how a photo reaches it --------------------------
const numbers = (values) => values.map((v) => String(+v.toFixed(6))).join("/");

function sourceText(meta) {
  const src = meta.imported;
  if (src?.kind === "torchvision") {
    const top5 = src.top5 != null ? `, ${src.top5.toFixed(1)} % top-5` : "";
    const acc = src.top1 != null ? `; torchvision reports ${src.top1.toFixed(1)} % top-1${top5} (centre crop)` : "";
    return `torchvision's ${src.arch}, weights ${src.weights} (${src.file}${acc})`;
  }
  if (src?.kind === "onnx") {
    return `ONNX file ${src.file}, sha256 ${src.sha256.slice(0, 16)}…${src.preset ? `, preset ${src.preset}` : ""}`;
  }
  const trained = meta.training ? `, trained here on ${meta.training.dataset}` : ", exported here";
  return `${meta.architecture?.name ?? "network"}${trained}`;
}

function preprocessingText(meta) {
  const p = meta.preprocessing;
  const mean = p.mean.every((v) => v === 0) ? "no mean" : `mean ${numbers(p.mean)}`;
  const std = p.std.every((v) => v === 1) ? "no std" : `std ${numbers(p.std)}`;
  const pixels = p.input_channels === 1 ? "luma" : (p.channel_order || "RGB");
  return `shorter side to ${p.resize_size} (${p.interpolation}), ${p.crop_size}×${p.crop_size} patches, ${pixels} `
    + `in ${p.pixel_range || "0-1"}, ${mean}, ${std}; ${meta.labels.length.toLocaleString("en-US")} classes`;
}

function showModel() {
  const versions = models.get(form.model.value) || [];
  const chosen = versions.find((v) => String(v.version) === form.version.value) || versions[0];
  const info = $("model-info");
  const meta = chosen?.metadata;
  if (!meta) {
    info.replaceChildren();
    return;
  }
  info.dataset.source = meta.imported?.kind || "exported";
  const kernels = el("a", { class: "kernels", href: kernelsUrl(chosen), target: "_blank", rel: "noopener" },
    "its first-layer kernels (the paper's Fig. 3)");
  info.replaceChildren(
    el("strong", {}, `${chosen.name}, version ${chosen.version}: `),
    el("span", { class: "source" }, sourceText(meta)), ". ",
    el("span", { class: "preprocessing" }, `Preprocessing: ${preprocessingText(meta)}`), ". See ", kernels, ".");
  const { resize_size: resize, crop_size: crop } = meta.preprocessing;
  for (const node of document.querySelectorAll(".fact-resize")) node.textContent = String(resize);
  for (const node of document.querySelectorAll(".fact-crop")) node.textContent = String(crop);
}

// The paper's Fig. 3: GET /v2/models/{m}/versions/{v}/kernels.png draws the first convolution's kernels.
const kernelsUrl = (v) => `/v2/models/${encodeURIComponent(v.name)}/versions/${v.version}/kernels.png`;

function query() {
  const params = new URLSearchParams({ details: "patches", square: "true", crops: form.crops.value });
  const k = Math.round(Number(form.topK.value));
  if (k >= 1) params.set("top_k", String(k));
  if (form.model.value) params.set("model", form.model.value);
  if (form.version.value) params.set("version", form.version.value);
  return params;
}

// -- one photo ---------------------------------------------------------------------------------------------
async function classify(card) {
  const run = ++card.run; // a later run (options changed) wins over an earlier one still on its way
  const body = new FormData();
  body.append("files", card.file, card.file.name);
  const node = card.node;
  node.setAttribute("aria-busy", "true");
  node.querySelector(".state").textContent = "Classifying…";
  let content;
  let square = null;
  try {
    const answer = await api(`/predict?${query()}`, { method: "POST", body });
    content = renderResult(answer, card.file.name);
    square = answer.results[0]?.details?.square_jpeg || null;
    node.dataset.state = "done";
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    content = [errorBox(error, card)];
    node.dataset.state = "error";
  }
  if (run !== card.run) return;
  node.querySelector(".state").textContent = "";
  node.querySelector(".body").replaceChildren(...content);
  node.removeAttribute("aria-busy");
  if (node.dataset.state === "done") await showNeighbours(card, run, square);
}

// -- the paper's Fig. 4: the photo and its nearest gallery images (POST /predict?neighbours=k) --------------------
const NEIGHBOURS = 8;
const galleries = new Map(); // "name/version" → GET /v2/models/{m}/versions/{v}/gallery, asked once per page load

function chosenVersion() {
  const versions = models.get(form.model.value) || [];
  return versions.find((v) => String(v.version) === form.version.value) || versions[0];
}

async function galleryOf(chosen) {
  const key = `${chosen.name}/${chosen.version}`;
  if (!galleries.has(key)) {
    galleries.set(key, api(`/v2/models/${encodeURIComponent(chosen.name)}/versions/${chosen.version}/gallery`)
      .catch(() => ({ gallery: null })));
  }
  return galleries.get(key);
}

async function showNeighbours(card, run, square) {
  const chosen = chosenVersion();
  if (!chosen) return;
  const info = await galleryOf(chosen);
  if (!info.gallery || run !== card.run) return; // no gallery for this version (alexnet-index build makes one)
  const params = query();
  params.delete("details");
  params.delete("square");
  params.set("top_k", "1");
  params.set("model", chosen.name);
  params.set("version", String(chosen.version));
  params.set("neighbours", String(Math.min(NEIGHBOURS, info.gallery.max_neighbours)));
  const body = new FormData();
  body.append("files", card.file, card.file.name);
  let section;
  try {
    section = neighboursFigure(await api(`/predict?${params}`, { method: "POST", body }), card, square);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    section = el("p", { class: "neighbours no-gallery" }, `No gallery search: ${error.message}`);
  }
  if (run !== card.run) return;
  card.node.querySelector(".neighbours")?.remove();
  card.node.append(section);
}

function neighboursFigure(answer, card, square) {
  const found = answer.results[0].neighbours;
  const query = el("figure", { class: "query" }, // the square its patches were cut from, as the gallery's thumbnails
    square ? el("img", { src: square, alt: `the photo ${card.file.name}` }) : el("span", { class: "nothumb" }),
    el("figcaption", {}, "this photo"));
  const items = found.map((n, i) => el("figure", { class: "neighbour", "data-file": n.file },
    n.thumbnail ? el("img", { src: n.thumbnail, alt: `gallery image ${n.file}` }) : el("span", { class: "nothumb" }),
    el("figcaption", {},
      el("span", { class: "rank" }, `${i + 1}. `), el("span", { class: "label" }, n.label || n.predicted || n.file),
      el("span", { class: "distance" }, ` d = ${n.distance.toFixed(2)}`))));
  const g = answer.gallery;
  return el("section", { class: "neighbours", "aria-label": "Nearest gallery images" },
    el("h3", {}, `Nearest of ${g.size.toLocaleString("en-US")} gallery images (Euclidean distance of the features; `
      + `${g.search === "flat" ? "exact" : "approximate"} search, generation ${g.generation})`),
    el("div", { class: "row" }, query, ...items));
}

function errorBox(error, card) {
  const kind = {
    0: "No answer", 401: "No API key", 403: "Not allowed", 404: "Not found", 413: "Too large",
    415: "Not an image", 422: "Not accepted", 503: "Not ready",
  }[error.status] || "Failed";
  const retry = el("button", { type: "button" }, "Try again");
  retry.addEventListener("click", () => classify(card));
  const later = error.retryAfter ? ` The service asks to retry in ${error.retryAfter} s.` : "";
  return el("div", { class: "error", role: "alert" },
    el("strong", {}, `${kind}${error.status ? ` (${error.status})` : ""}: `),
    el("span", { class: "detail" }, error.message), later, " ", retry);
}

function addPhotos(files) {
  const images = [...files];
  if (!images.length) return;
  $("clear").hidden = false;
  const added = images.map((file) => {
    const node = el("article", { class: "result", "data-filename": file.name },
      el("h2", {}, file.name), el("p", { class: "state", role: "status" }), el("div", { class: "body" }));
    return { file, node, run: 0 };
  });
  results.prepend(...added.map((c) => c.node));
  cards.unshift(...added);
  runAll(added);
}

// A few photos at a time: the service batches concurrent requests into shared model runs.
async function runAll(list, parallel = 4) {
  const queue = [...list];
  const worker = async () => {
    while (queue.length) await classify(queue.shift());
  };
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker));
}

// -- input: file dialog, drop, paste; option changes ---------------------------------------------------------
const drop = $("drop");
const input = $("files");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    input.click();
  }
});
input.addEventListener("change", () => {
  addPhotos(input.files);
  input.value = "";
});
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) drop.classList.remove("over");
});
document.addEventListener("drop", (event) => {
  event.preventDefault(); // never let the browser navigate to the dropped file
  drop.classList.remove("over");
  addPhotos(event.dataTransfer.files);
});
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.files];
  if (files.length) addPhotos(files.map((f, i) => (f.name && f.name !== "image.png" ? f
    : new File([f], `pasted-${Date.now()}-${i + 1}.${f.type.split("/")[1] || "png"}`, { type: f.type }))));
});
$("clear").addEventListener("click", () => {
  cards.length = 0;
  results.replaceChildren();
  $("clear").hidden = true;
});
$("options").addEventListener("submit", (event) => event.preventDefault());
form.model.addEventListener("change", () => {
  modelChanged();
  runAll(cards);
});
form.version.addEventListener("change", showModel);
for (const control of [form.version, form.crops, form.topK]) control.addEventListener("change", () => runAll(cards));

loadModels();
