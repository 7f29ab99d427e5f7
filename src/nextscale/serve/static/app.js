// The nextscale web app: forms -> JSON API -> a job polled until done; each scale is shown as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;  // GET /api/info

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node[k] = v;
  for (const c of children) node.append(c);
  return node;
}

function showError(prefix, message) {
  const box = $(prefix + "-error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the server cannot be reached (" + e.message + ")");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || ("the server answered " + response.status));
  return body;
}

function classOptions(select, withRandom) {
  select.innerHTML = "";
  if (withRandom) select.append(el("option", {value: "random", textContent: "random class"}));
  select.append(el("option", {value: "unconditional", textContent: "unconditional (no class)"}));
  for (let c = 0; c < info.num_classes; c++) {
    const name = info.class_names[c] || ("class " + c);
    select.append(el("option", {value: info.class_names[c] || String(c), textContent: c + ": " + name}));
  }
}

function guidanceOptions(select) {  // the schedules the server takes for this model's scales
  select.innerHTML = "";
  const count = info.patch_nums.length;
  for (const value of info.guidance_choices) {
    let text = value;
    if (value === "linear") text = "linear ramp (the paper's)";
    else if (value === "constant") text = "constant";
    else {
      const n = Number(value.split(":")[1]);
      text = n === 0 ? "none (no unconditional pass)"
                     : "ramp on the first " + n + " of " + count + " scales, then none (faster)";
    }
    select.append(el("option", {value, textContent: text}));
  }
}

function fillDefaults(prefix) {
  const d = info.defaults;
  guidanceOptions($(prefix + "-guidance"));
  $(prefix + "-guidance").value = d.guidance;
  $(prefix + "-seed").value = d.seed;
  $(prefix + "-cfg").value = d.cfg;
  $(prefix + "-topk").value = d.top_k;
  $(prefix + "-topp").value = d.top_p;
  $(prefix + "-num").value = prefix === "gen" ? d.num_images : 1;
}

function settings(prefix) {  // raw field text: the server checks the values and says what is wrong
  return {seed: $(prefix + "-seed").value, cfg: $(prefix + "-cfg").value, top_k: $(prefix + "-topk").value,
          top_p: $(prefix + "-topp").value, num_images: $(prefix + "-num").value,
          class: $(prefix + "-class").value, guidance: $(prefix + "-guidance").value};
}

// ---- jobs: poll until done, adding a column of images per finished scale ----
function describe(status) {
  if (status.status === "queued")
    return "waiting: position " + status.position + " in the queue (one generation runs at a time)";
  if (status.status === "running")
    return "generating: scale " + status.scales_done + " of " + status.num_scales + " done";
  if (status.status === "done") return "done in " + status.seconds + " s";
  return "failed";
}

function addScale(table, scale, index, count) {
  if (!table.rows.length) {
    table.append(el("tr", {}, [el("th")]));
    scale.images.forEach((_, i) => table.append(el("tr", {}, [el("th", {textContent: "#" + (i + 1)})])));
  }
  const pn = scale.pn;
  table.rows[0].append(el("th", {textContent: pn + "\u00d7" + pn, title: "scale " + (index + 1) + " of " + count}));
  scale.images.forEach((src, i) => table.rows[i + 1].append(
      el("td", {}, [el("img", {src, alt: "image " + (i + 1) + " at scale " + pn + "x" + pn, className: "scale-img"})])));
}

async function runJob(prefix, path, body, onDone) {
  const button = $(prefix + "-submit");
  const status = $(prefix + "-status");
  const table = $(prefix + "-scales");
  showError(prefix, "");
  button.disabled = true;
  try {
    let job = await api(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body)});
    table.innerHTML = "";
    $(prefix + "-out").hidden = false;
    $(prefix + "-out").dataset.state = "running";
    let seen = 0;
    for (;;) {
      status.textContent = describe(job);
      status.dataset.state = job.status;
      for (const scale of job.scales) addScale(table, scale, seen++, job.num_scales);
      if (job.status === "done") { onDone(job.result); break; }
      if (job.status === "error") throw new Error(job.error);
      await new Promise((resolve) => setTimeout(resolve, 150));
      job = await api("/api/jobs/" + job.id + "?from=" + seen);
    }
  } catch (e) {
    status.textContent = "";
    showError(prefix, e.message);
  } finally {
    button.disabled = false;
  }
}

// ---- generate view ----
$("gen-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = settings("gen");
  body.more_smooth = $("gen-smooth").checked;
  $("gen-grid").removeAttribute("src");
  runJob("gen", "/api/generate", body, (result) => {
    $("gen-grid").onload = () => { $("gen-grid").style.width = 3 * $("gen-grid").naturalWidth + "px"; };
    $("gen-grid").src = result.grid;
    $("gen-grid").dataset.count = result.images.length;
    $("gen-download").href = result.grid;
    $("gen-out").dataset.state = "done";
  });
});

// ---- edit view: an image, a rectangle dragged on it, a mode ----
const canvas = $("edit-canvas");
const edit = {image: null, picture: null, box: null, drag: null};

function drawCanvas() {
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (edit.picture) ctx.drawImage(edit.picture, 0, 0, canvas.width, canvas.height);
  const b = edit.drag || edit.box;
  if (b) {
    const [y0, x0, y1, x1] = b.map((v) => v * canvas.width);
    ctx.fillStyle = "rgba(0, 90, 255, 0.25)";
    ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    ctx.strokeStyle = "#05f";
    ctx.lineWidth = 2;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
}

function setImage(dataUrl) {
  const picture = new Image();
  picture.onload = () => { edit.picture = picture; drawCanvas(); };
  picture.src = dataUrl;
  edit.image = dataUrl;
  canvas.dataset.loaded = "1";
}

function fraction(event) {
  const r = canvas.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientY - r.top) / r.height), clamp((event.clientX - r.left) / r.width)];
}

function boxFrom(a, b) {
  const round = (v) => Math.round(v * 1000) / 1000;
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(round);
}

canvas.addEventListener("pointerdown", (event) => {
  if (!edit.image) { showError("edit", "choose an image first"); return; }
  canvas.setPointerCapture(event.pointerId);
  edit.start = fraction(event);
  edit.drag = boxFrom(edit.start, edit.start);
});
canvas.addEventListener("pointermove", (event) => {
  if (!edit.drag) return;
  edit.drag = boxFrom(edit.start, fraction(event));
  drawCanvas();
});
canvas.addEventListener("pointerup", (event) => {
  if (!edit.drag) return;
  edit.box = boxFrom(edit.start, fraction(event));
  edit.drag = null;
  $("edit-box-text").textContent = "rectangle y0, x0, y1, x1 = " + edit.box.join(", ");
  drawCanvas();
});

$("edit-file").addEventListener("change", async () => {
  const file = $("edit-file").files[0];
  if (!file) return;
  showError("edit", "");
  if (file.size > info.limits.max_upload_bytes) {
    showError("edit", "the file is " + (file.size / 1e6).toFixed(1) + " MB; the limit is " +
              info.limits.max_upload_bytes / 1e6 + " MB");
    return;
  }
  try {
    const prepared = await api("/api/image", {method: "POST", body: file,
                                              headers: {"Content-Type": "application/octet-stream"}});
    document.querySelectorAll(".tests img").forEach((img) => img.classList.remove("chosen"));
    setImage(prepared.image);
  } catch (e) {
    showError("edit", e.message);
  }
});

async function loadTestImages() {
  const {images} = await api("/api/test-images");
  for (const t of images) {
    const img = el("img", {src: t.image, title: t.name, alt: t.name, className: "test-image"});
    img.dataset.label = t.label;
    img.addEventListener("click", () => {
      document.querySelectorAll(".tests img").forEach((other) => other.classList.remove("chosen"));
      img.classList.add("chosen");
      setImage(t.image);
    });
    $("edit-tests").append(img);
  }
}

function figure(src, caption, download) {
  const children = [el("img", {src, alt: caption}), el("figcaption", {textContent: caption})];
  if (download) children.push(el("a", {href: src, download, textContent: "download PNG", className: "download"}));
  return el("figure", {}, children);
}

$("edit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = settings("edit");
  body.mode = $("edit-mode").value;
  body.image = edit.image;
  body.box = edit.box;
  if (!edit.image) { showError("edit", "choose an image first: upload one or pick a test image"); return; }
  $("edit-result").innerHTML = "";
  runJob("edit", "/api/edit", body, (result) => {
    const out = $("edit-result");
    out.append(figure(result.input, "input"), figure(result.mask, "mask (blue: regenerated)"));
    result.images.forEach((src, i) =>
      out.append(figure(src, "result, seed " + result.seeds[i], "nextscale_edit_seed" + result.seeds[i] + ".png")));
    $("edit-out").dataset.state = "done";
  });
});

// ---- tabs and start ----
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + tab.dataset.view; });
  });
}

(async () => {
  try {
    info = await api("/api/info");
  } catch (e) {
    $("model-info").textContent = "cannot load the model description: " + e.message;
    return;
  }
  $("model-info").textContent = info.model + ": " + info.resolution + "\u00d7" + info.resolution + " images, " +
      info.num_classes + " classes, scales " + info.patch_nums.join(", ") + ". One generation at a time; " +
      "time limit " + info.time_limit + " s per request.";
  classOptions($("gen-class"), true);
  classOptions($("edit-class"), false);
  fillDefaults("gen");
  fillDefaults("edit");
  drawCanvas();
  document.body.dataset.ready = "1";
  loadTestImages().catch((e) => showError("edit", "cannot load the test images: " + e.message));
})();
