// One photo's result as DOM: the square with the patch outlines, the patch tiles, the averaged top-k.
// Everything is drawn from /predict?details=patches&square=true: the boxes, the square and the names come
// from the service, so no patch geometry lives here. Text goes in as text (textContent), never as HTML.

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const percent = (p, digits) => `${(100 * p).toFixed(digits)}%`;

const regionOf = (patch) => patch.name.replace(/-flipped$/, "");
const readable = (patch) => `${regionOf(patch).replace("-", " ")}${patch.flipped ? ", mirrored" : ""}`;

// The square, with one outline per region (a patch and its mirror image cover the same region).
function square(details, filename) {
  const size = details.square_size;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("aria-hidden", "true");
  const drawn = new Set();
  for (const patch of details.patches) {
    const [left, top, right, bottom] = patch.box;
    const key = patch.box.join(",");
    if (drawn.has(key)) continue;
    drawn.add(key);
    const rect = document.createElementNS(SVG, "rect");
    const inset = 1.5; // keep the stroke inside the square
    for (const [name, value] of Object.entries({
      x: left + inset, y: top + inset, width: right - left - 2 * inset, height: bottom - top - 2 * inset,
    })) rect.setAttribute(name, value);
    rect.setAttribute("class", `outline region-${regionOf(patch)}`);
    svg.append(rect);
  }
  const outlines = drawn.size === 1 ? "the patch's outline" : `the ${drawn.size} patch outlines`;
  return el("figure", { class: "square" },
    el("div", { class: "frame" },
      el("img", { src: details.square_jpeg, alt: `${filename}: the ${size}×${size} square the patches are cut from` }),
      svg),
    el("figcaption", {}, `The ${size}×${size} square with ${outlines}`));
}

// One patch: the square shown through a window on its box, mirrored for a flipped patch.
function tile(patch, details, filename) {
  const [left, top, right] = patch.box;
  const crop = right - left;
  const best = patch.predictions[0];
  const img = el("img", {
    src: details.square_jpeg,
    alt: `${filename}, ${readable(patch)} patch: ${best.label}, ${percent(best.probability, 1)}`,
  });
  img.style.width = `${(100 * details.square_size) / crop}%`;
  img.style.left = `${(-100 * left) / crop}%`;
  img.style.top = `${(-100 * top) / crop}%`;
  return el("figure", { class: `tile region-${regionOf(patch)}${patch.flipped ? " flipped" : ""}`, "data-patch": patch.name },
    el("div", { class: "window" }, img),
    el("figcaption", {},
      el("span", { class: "name" }, readable(patch)),
      el("span", { class: "label", title: best.label }, best.label),
      el("span", { class: "prob" }, percent(best.probability, 1))));
}

// Patches first in the service's order; each mirror image right below the patch of the same box.
function tileOrder(patches) {
  const plain = patches.filter((p) => !p.flipped);
  const mirrored = plain.map((p) => patches.find((q) => q.flipped && q.box.join() === p.box.join()));
  const placed = new Set([...plain, ...mirrored]);
  return [...plain, ...mirrored.filter(Boolean), ...patches.filter((p) => !placed.has(p))];
}

function topList(predictions) {
  return el("ol", { class: "top" }, ...predictions.map((p) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = percent(p.probability, 3);
    return el("li", { "data-class-index": String(p.index) },
      el("span", { class: "label" }, p.label),
      el("span", { class: "track", "aria-hidden": "true" }, bar),
      el("span", { class: "prob" }, percent(p.probability, 2)));
  }));
}

function meta(answer, result) {
  const t = answer.timing;
  const rows = [
    ["Model", `${answer.model.name}, version ${answer.model.version}`],
    ["Runs on", answer.provider],
    ["Patches", answer.crops === "ten" ? "ten, averaged" : "the centre one"],
    ["Image", `${result.image.format}, ${result.image.width}×${result.image.height}`],
    ["Time", `${t.total_ms.toFixed(1)} ms in the service: decoding ${t.preprocess_ms.toFixed(1)} ms, model ${t.inference_ms.toFixed(1)} ms`],
  ];
  return el("dl", { class: "meta" }, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// The whole result of one photo: answer is /predict's JSON for this one file.
export function renderResult(answer, filename) {
  const result = answer.results[0];
  const details = result.details;
  const best = result.predictions[0];
  const patches = tileOrder(details.patches);
  const agree = details.patches.filter((p) => p.predictions[0].index === best.index).length;
  const n = details.patches.length;
  const heading = n === 1 ? "The patch" : `The ${n} patches`;
  return [
    el("div", { class: "summary" },
      square(details, filename),
      el("section", { class: "averaged", "aria-label": "Averaged prediction" },
        el("h3", {}, n === 1 ? "Top classes of the centre patch" : `Top ${result.predictions.length}, averaged over the ${n} patches`),
        topList(result.predictions),
        el("p", { class: "agree" }, n === 1 ? "" : `${agree} of ${n} patches have ${best.label} as their own top class.`),
        meta(answer, result))),
    el("section", { class: "patches", "aria-label": heading },
      el("h3", {}, `${heading}, each with its own top class`),
      el("div", { class: `tiles${n === 1 ? " single" : ""}` }, ...patches.map((p) => tile(p, details, filename)))),
  ];
}
