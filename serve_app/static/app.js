// The pab-serve playground: a plain client of the Videos API (no framework, no build step, nothing from a CDN).
// Every URL is relative to <base href>, which the server sets to the app's route prefix.

const KEY_STORAGE = "pab-serve-api-key";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

class APIError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let model = null;
let following = 0; // bumps whenever another job is shown, so an older poll loop stops
let objectUrls = [];

// ---- HTTP ----------------------------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    const message = await errorMessage(response);
    if (response.status === 401) askForKey(key ? message : null);
    throw new APIError(response.status, message);
  }
  return response;
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    return JSON.parse(text).error.message || text;
  } catch {
    return text || `HTTP ${response.status}`;
  }
}

const json = async (path, options) => (await api(path, options)).json();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- API key ---------------------------------------------------------------------------------------------------
function askForKey(problem) {
  $("main").hidden = true;
  $("key-panel").hidden = false;
  const note = $("key-panel").querySelector("p");
  note.textContent = problem ? `${problem}` : "This server needs an API key. It is kept in this tab's session only.";
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
  $("key").value = "";
  start();
});

// ---- the model's controls --------------------------------------------------------------------------------------
async function start() {
  try {
    model = await json("playground/model");
  } catch (error) {
    if (error.status === 401) return;
    $("notice").textContent = error.message;
    $("notice").hidden = false;
    if (error.status === 503) setTimeout(start, 2000); // the model is still loading
    return;
  }
  $("notice").hidden = true;
  $("key-panel").hidden = true;
  $("main").hidden = false;
  fillControls(model);
  showQuality(model);
  refreshJobs();
}

function fillControls(card) {
  const d = card.defaults;
  $("model-name").textContent = card.model;
  for (const [id, value] of [["width", d.width], ["height", d.height], ["frames", d.num_frames], ["steps", d.num_inference_steps]]) {
    $(id).value = value;
    $(id).placeholder = value;
  }
  for (const id of ["width", "height"]) Object.assign($(id), { step: card.size_step, min: card.size_step });
  if (card.frames.fixed) $("frames").readOnly = true;
  $("steps").max = card.limits.max_steps;
  $("frames").max = card.limits.max_frames;
  const select = $("preset");
  select.replaceChildren(option("", `server default (${card.preset_now})`));
  for (const name of card.presets) select.append(option(name, name));
  const vocabulary = card.vocabulary;
  $("vocabulary").hidden = !vocabulary;
  if (vocabulary) {
    $("prompt").placeholder = vocabulary.example;
    if (!$("prompt").value) $("prompt").value = vocabulary.example;
    $("words").replaceChildren(...vocabulary.words.map(wordButton));
  }
}

function option(value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  return element;
}

function wordButton(word) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = word;
  button.addEventListener("click", () => {
    const prompt = $("prompt");
    prompt.value = `${prompt.value.trim()} ${word}`.trim();
  });
  return button;
}

function showQuality(card) {
  const q = card.quality;
  const badge = $("quality");
  badge.hidden = !q;
  if (!q) return;
  const window = q.windows[q.default_preset] || [];
  const sorted = [...window].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : null;
  badge.textContent = q.fallback_active
    ? `quality watch: ${q.default_preset} below ${q.floor_psnr_db} dB, running ${q.fallback_preset}`
    : `quality watch: ${q.default_preset} ${median === null ? "no samples yet" : `~${median.toFixed(1)} dB PSNR`}`;
  badge.classList.toggle("bad", q.fallback_active);
}

// ---- creating and following a job ------------------------------------------------------------------------------
$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  hideError();
  const body = { prompt: $("prompt").value, size: `${$("width").value}x${$("height").value}` };
  for (const [field, id] of [["frames", "frames"], ["steps", "steps"], ["seed", "seed"]]) {
    if ($(id).value !== "") body[field] = Number($(id).value);
  }
  if ($("preset").value) body.pab = $("preset").value;
  $("submit").disabled = true;
  try {
    const video = await json("v1/videos", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    follow(video.id);
    refreshJobs();
  } catch (error) {
    if (error.status !== 401) showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
});

async function follow(id) {
  const token = ++following;
  clearResult();
  $("job").hidden = false;
  $("job-id").textContent = id;
  while (token === following) {
    let response;
    try {
      response = await api(`v1/videos/${id}`);
    } catch (error) {
      showError(error.message);
      return;
    }
    const video = await response.json();
    showProgress(video);
    if (TERMINAL.has(video.status)) {
      if (token === following) await showFinished(video);
      refreshJobs();
      return;
    }
    await sleep(Math.max(50, Number(response.headers.get("openai-poll-after-ms") || 500)));
  }
}

function showProgress(video) {
  $("progress").value = video.status === "completed" ? 100 : video.progress;
  $("job-status").textContent = video.status === "in_progress" ? `in progress ${video.progress}%` : video.status;
  $("job-status").classList.toggle("bad", video.status === "failed");
}

async function showFinished(video) {
  if (video.status !== "completed") {
    showError(video.error ? video.error.message : `the job is ${video.status}`);
    return;
  }
  const [mp4, thumbnail, spritesheet] = await Promise.all(
    ["video", "thumbnail", "spritesheet"].map((variant) => blobUrl(video.id, variant)),
  );
  $("video").src = mp4;
  $("thumbnail").src = thumbnail;
  $("spritesheet").src = spritesheet;
  $("result").hidden = false;
  $("stats").replaceChildren(statsView(video));
}

// The content needs the Authorization header, which <video src> cannot send: fetch it, play it from a blob URL.
async function blobUrl(id, variant) {
  const response = await api(`v1/videos/${id}/content?variant=${variant}`);
  const url = URL.createObjectURL(await response.blob());
  objectUrls.push(url);
  return url;
}

function clearResult() {
  hideError();
  $("result").hidden = true;
  $("stats").replaceChildren();
  for (const id of ["video", "thumbnail", "spritesheet"]) $(id).removeAttribute("src");
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

// ---- PAB stats -------------------------------------------------------------------------------------------------
const percent = (x) => `${(100 * x).toFixed(1)}%`;

function table(title, rows) {
  const element = document.createElement("table");
  element.innerHTML = `<thead><tr><th colspan="2"></th></tr></thead><tbody></tbody>`;
  element.querySelector("th").textContent = title;
  for (const [name, value] of rows) {
    const row = element.tBodies[0].insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = value;
  }
  return element;
}

function statsView(video) {
  const box = document.createElement("div");
  box.className = "stats";
  const stats = video.stats || {};
  const kinds = Object.entries(stats.kinds || {}).filter(([, k]) => k.calls);
  box.append(table(`PAB hit rate (${stats.preset || "none"})`,
    kinds.map(([kind, k]) => [kind, `${percent(k.hit_rate)} of ${k.calls}`])));
  const comm = stats.comm || {};
  box.append(table("communication", [
    ["bytes sent", (comm.issued_bytes || 0).toLocaleString()],
    ["bytes skipped", (comm.skipped_bytes || 0).toLocaleString()],
    ["saved", percent(comm.saved_fraction || 0)],
  ]));
  const timings = Object.entries(video.timings || {}).map(([name, s]) => [name.replace(/_s$/, ""), `${s.toFixed(3)} s`]);
  box.append(table("timings", timings));
  return box;
}

// ---- recent jobs -----------------------------------------------------------------------------------------------
async function refreshJobs() {
  let listing;
  try {
    listing = await json("v1/videos?limit=10");
  } catch (error) {
    if (error.status !== 401) showError(error.message);
    return;
  }
  const rows = listing.data.map((video) => {
    const row = document.createElement("tr");
    row.className = "clickable";
    row.dataset.id = video.id;
    for (const [value, cls] of [[video.id.slice(0, 14) + "...", ""], [video.status, ""], [video.prompt, "prompt"],
                                [`${video.size} x${video.frames}`, ""]]) {
      const cell = row.insertCell();
      cell.textContent = value;
      if (cls) cell.className = cls;
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small danger";
    remove.textContent = "delete";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      deleteJob(video.id);
    });
    row.insertCell().append(remove);
    row.addEventListener("click", () => follow(video.id));
    return row;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
}

async function deleteJob(id) {
  try {
    await api(`v1/videos/${id}`, { method: "DELETE" });
  } catch (error) {
    showError(error.message);
  }
  if ($("job-id").textContent === id) {
    following++;
    clearResult();
    $("job").hidden = true;
  }
  refreshJobs();
}

$("refresh").addEventListener("click", () => refreshJobs());

// ---- errors ----------------------------------------------------------------------------------------------------
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

start();
