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
}

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
  try {
    const answer = await api(`/predict?${query()}`, { method: "POST", body });
    content = renderResult(answer, card.file.name);
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
for (const control of [form.version, form.crops, form.topK]) control.addEventListener("change", () => runAll(cards));

loadModels();
