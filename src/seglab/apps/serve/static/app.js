// The seglab serve page: upload or drop an image, show the overlay, legend, class under the pointer;
// for an instance model the overlay, a table of instances and the instance under the pointer.
// No external assets: everything comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, labels: null, ids: null, instances: [], width: 0, height: 0, objectUrl: null,
  file: null };
const isInstance = () => Boolean(state.model && state.model.task === "instance");

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
}

async function explain(response) {
  // Every error of the API is JSON: {status, error, detail, accepted}.
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) $("key-option").hidden = false;
  const detail = body && body.detail ? body.detail : response.statusText;
  const accepted = body && body.accepted ? " Accepted: " + body.accepted + "." : "";
  return "Error " + response.status + ": " + detail + accepted;
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { showMessage(await explain(response), "error"); return; }
  state.model = (await response.json()).models[0];
  $("model-name").textContent = state.model.name + " · " + (isInstance() ? "instances · " : "") +
    state.model.num_classes + " classes";
  $("mc-option").hidden = !state.model.mc_dropout;
  $("score-option").hidden = !isInstance();
  if (isInstance()) $("score-threshold").value = state.model.score_threshold;
  $("hover-class").textContent = "Point at the prediction to see the " + (isInstance() ? "instance." : "class.");
}

async function loadSamples() {
  const response = await fetch("/v1/samples", { headers: headers() });
  if (!response.ok) return;
  for (const sample of (await response.json()).samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = sample.name;
    button.dataset.sample = sample.name;
    button.addEventListener("click", async () => {
      const image = await fetch(sample.url, { headers: headers() });
      if (!image.ok) { showMessage(await explain(image), "error"); return; }
      segment(new File([await image.blob()], sample.name + ".png", { type: "image/png" }));
    });
    $("samples").appendChild(button);
  }
}

function decodeLabels(b64, dtype, width, height) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  if (dtype === "uint8") return bytes;
  const out = new Uint16Array(width * height);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
  return out;
}

function className(id) {
  const cls = state.model && state.model.classes[id];
  return cls ? cls.name : "class " + id;
}

function drawLegend(classes) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  const sorted = [...classes].sort((a, b) => b.fraction - a.fraction);
  for (const cls of sorted) {
    const row = document.createElement("tr");
    row.dataset.classId = cls.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + cls.color.join(",") + ")";
    const cells = [swatch, document.createTextNode(cls.name), document.createTextNode((100 * cls.fraction).toFixed(1) + " %")];
    cells.forEach((node, i) => {
      const td = document.createElement("td");
      if (i === 1) td.className = "name";
      if (i === 2) td.className = "pct";
      td.appendChild(node);
      row.appendChild(td);
    });
    body.appendChild(row);
  }
}

function drawInstances(instances) {
  // One row per instance, in score order; row i is id i + 1 of the id map.
  const body = $("instances").querySelector("tbody");
  body.replaceChildren();
  for (const inst of instances) {
    const row = document.createElement("tr");
    row.dataset.instanceId = inst.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + inst.color.join(",") + ")";
    const cells = [[swatch, ""], [String(inst.id), "id"], [inst.class_name, "name"],
      [inst.score.toFixed(3), "score"], [inst.box.map((v) => v.toFixed(1)).join(", "), "box"]];
    for (const [content, cls] of cells) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.append(content);
      row.appendChild(td);
    }
    body.appendChild(row);
  }
}

function showResult(result) {
  // Fills the panel for either task; returns the mask (or overlay) image's src.
  const instance = result.task === "instance";
  $("legend").hidden = instance;
  $("instances").hidden = !instance;
  $("result-title").textContent = instance ? result.count + " instances" : "Classes";
  document.querySelector("aside").classList.toggle("wide", instance);
  $("uncertainty").hidden = !result.maps.entropy_png;
  if (instance) {
    state.labels = null;
    state.instances = result.instances;
    state.ids = decodeLabels(result.maps.ids_b64, result.maps.ids_dtype, state.width, state.height);
    drawInstances(result.instances);
    return result.maps.overlay_png;
  }
  state.ids = null;
  state.labels = decodeLabels(result.maps.labels_b64, result.maps.labels_dtype, state.width, state.height);
  drawLegend(result.classes);
  if (result.maps.entropy_png) {
    $("entropy").src = result.maps.entropy_png;
    $("mutual-info").src = result.maps.mutual_info_png;
  }
  return result.maps.color_png;
}

async function segment(file) {
  if (!file) return;
  showMessage("Segmenting " + file.name + " …", "busy");
  $("overlay").dataset.state = "busy";
  const form = new FormData();
  form.append("file", file, file.name);
  let url = "/v1/segment?format=json&maps=true";
  const mc = parseInt($("mc-samples").value, 10);
  if (state.model && state.model.mc_dropout && mc > 0) url += "&mc_samples=" + mc;
  const threshold = parseFloat($("score-threshold").value);
  if (isInstance() && threshold >= 0 && threshold <= 1) url += "&score_threshold=" + threshold;
  let response;
  try {
    response = await fetch(url, { method: "POST", body: form, headers: headers() });
  } catch (e) {
    showMessage("The server could not be reached: " + e.message, "error");
    return;
  }
  if (!response.ok) {
    $("overlay").dataset.state = "error";
    showMessage(await explain(response), "error");
    return;
  }
  const result = await response.json();
  state.file = file;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  state.width = result.image_size.width;
  state.height = result.image_size.height;
  $("original").src = state.objectUrl;
  $("overlay-base").src = state.objectUrl;
  const maskLoaded = new Promise((resolve) => { $("mask").onload = resolve; });
  $("mask").src = showResult(result);
  $("timing").textContent = "Model " + result.inference_ms.toFixed(1) + " ms (batch of " + result.batch_size +
    "), request " + result.total_ms.toFixed(1) + " ms · " + state.width + " × " + state.height + " px";
  $("result").hidden = false;
  await maskLoaded;
  $("overlay").dataset.state = "done";
  $("overlay").dataset.file = file.name;
  showMessage("Segmented " + file.name + ".", "");
}

function describeInstance(id) {
  for (const row of $("instances").querySelectorAll("tbody tr")) {
    row.classList.toggle("hovered", Number(row.dataset.instanceId) === id);
  }
  if (id === 0) return "background";
  const inst = state.instances[id - 1];
  return "#" + id + " " + inst.class_name + " " + inst.score.toFixed(3);
}

function pointAt(event) {
  if (!state.labels && !state.ids) return;
  const box = $("mask").getBoundingClientRect();
  const x = Math.floor((event.clientX - box.left) * state.width / box.width);
  const y = Math.floor((event.clientY - box.top) * state.height / box.height);
  if (x < 0 || y < 0 || x >= state.width || y >= state.height) return;
  const at = y * state.width + x;
  const what = state.ids ? describeInstance(state.ids[at]) : className(state.labels[at]);
  $("hover-class").textContent = "(" + x + ", " + y + "): " + what;
}

function setOpacity() { $("mask").style.opacity = $("opacity").value / 100; }

function wire() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => segment(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    segment(e.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", setOpacity);
  $("overlay").addEventListener("mousemove", pointAt);
  $("api-key").addEventListener("change", () => { loadModel(); });
  $("score-threshold").addEventListener("change", () => segment(state.file));  // the last image, new threshold
  setOpacity();
}

wire();
loadModel().then(loadSamples);
