// The Offload page: one session, its uploads, a job form built from each kind's JSON Schema, and
// live job progress from the session websocket. Plain DOM code with no dependencies.
"use strict";

const SESSION_KEY = "offload.session_id";
const ACTIVE_STATES = new Set(["queued", "running"]);
const IMAGE_NAME = /\.(png|jpe?g|gif|webp|bmp|avif)$/i;
// Reconnect delays double from the first to the last, with a random spread of +-25 %.
const RETRY_FIRST_MS = 500;
const RETRY_LAST_MS = 5000;
// Results longer than this, as compact JSON, are folded into a <details> element.
const INLINE_JSON_CHARS = 300;

const state = {
  sessionId: null,
  files: new Map(),
  jobs: new Map(),
  jobViews: new Map(),
  kinds: new Map(),
  paramFields: new Map(),
  lastSeq: null,
  socket: null,
  retries: 0,
  retryTimer: null,
  recovering: false,
  connectionLost: false,
  // Announced with "Reconnected" once the stream is live again, so that this message is not lost.
  notice: null,
  uploadQueue: [],
  uploading: false,
};

const $ = (id) => document.getElementById(id);

// DOM helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function formatBytes(size) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${size} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(6)));
  return String(value);
}

function shortId(id) {
  return id.slice(0, 8);
}

function announce(message, level = "info") {
  const status = $("status");
  status.dataset.level = level;
  status.textContent = message;
}

// HTTP

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Thrown by sessionRequest when the session is gone. The page is already creating a new one.
class SessionGone extends Error {}

async function request(method, path, body) {
  const options = {method, credentials: "same-origin", headers: {}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 204) return null;

  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new HttpError(response.status, error.code || "error",
      error.message || `${method} ${path} failed with status ${response.status}`);
  }
  return data;
}

function sessionPath(suffix) {
  return `/api/sessions/${encodeURIComponent(state.sessionId)}${suffix}`;
}

// Send a request under the session. The token travels in the HttpOnly cookie that
// POST /api/sessions set, so the page never handles it.
async function sessionRequest(method, suffix, body) {
  try {
    return await request(method, sessionPath(suffix), body);
  } catch (error) {
    if (error instanceof HttpError && (error.status === 401 || error.status === 404)) {
      if (await sessionStatus() === "gone") {
        replaceLostSession();
        throw new SessionGone("session gone");
      }
    }
    throw error;
  }
}

function describeError(error) {
  if (error instanceof HttpError) return error.message;
  if (error instanceof TypeError) return "cannot reach the server";
  return String(error.message || error);
}

function report(error, what) {
  if (error instanceof SessionGone) return;
  announce(`${what} failed: ${describeError(error)}`, "error");
}

// Session and connection

// Return "ok" or "gone". Throws when the server cannot be reached or is not ready.
async function sessionStatus() {
  try {
    const data = await request("GET", sessionPath("/files"));
    setFiles(data.files);
    return "ok";
  } catch (error) {
    if (error instanceof HttpError && (error.status === 401 || error.status === 404)) return "gone";
    throw error;
  }
}

async function createSession() {
  const data = await request("POST", "/api/sessions");
  state.sessionId = data.session_id;
  sessionStorage.setItem(SESSION_KEY, data.session_id);
  state.lastSeq = null;
  state.files.clear();
  setFiles([]);
  replaceJobs([]);
  $("session").textContent = `Session ${shortId(data.session_id)}`;
  $("session").title = data.session_id;
  pumpUploads();
}

function replaceLostSession() {
  const lost = state.sessionId;
  state.sessionId = null;
  sessionStorage.removeItem(SESSION_KEY);
  closeSocket();
  state.notice = `The server no longer has session ${shortId(lost)} (it expired, or the server restarted `
    + "with other data), so the page started a new session.";
  announce(state.notice, "warning");
  recover();
}

// Bring the page to a live stream: load the job kinds, check or create the session, connect.
// Every failure schedules another try with a growing delay.
async function recover() {
  if (state.recovering) return;
  state.recovering = true;
  clearTimeout(state.retryTimer);
  setConnection("connecting", "connecting");
  try {
    if (state.kinds.size === 0) await loadKinds();
    await ensureSession();
    connect();
  } catch (error) {
    scheduleRecovery(error);
  } finally {
    state.recovering = false;
  }
}

async function ensureSession() {
  if (state.sessionId !== null && await sessionStatus() === "ok") {
    $("session").textContent = `Session ${shortId(state.sessionId)}`;
    $("session").title = state.sessionId;
    pumpUploads();
    return;
  }
  const lost = state.sessionId;
  await createSession();
  if (lost !== null) {
    state.notice = `Session ${shortId(lost)} is gone from the server, so the page started a new session `
      + `${shortId(state.sessionId)}.`;
  }
}

function scheduleRecovery(error) {
  const base = Math.min(RETRY_LAST_MS, RETRY_FIRST_MS * 2 ** state.retries);
  const delay = base * (0.75 + Math.random() * 0.5);
  state.retries += 1;
  const seconds = Math.max(1, Math.round(delay / 1000));
  setConnection("offline", `offline, retrying in ${seconds} s`);
  if (error) announce(`Connecting failed: ${describeError(error)}. Retrying in ${seconds} s.`, "error");
  state.retryTimer = setTimeout(recover, delay);
}

function setConnection(name, text) {
  const indicator = $("connection");
  indicator.dataset.state = name;
  indicator.textContent = text;
}

function connect() {
  // The session may have been found gone while this connection was being prepared.
  if (state.sessionId === null) {
    scheduleRecovery(null);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = state.lastSeq === null ? "" : `?after=${state.lastSeq}`;
  const socket = new WebSocket(`${scheme}//${location.host}${sessionPath("/ws")}${query}`);
  state.socket = socket;

  socket.addEventListener("message", (message) => {
    if (state.socket !== socket) return;
    if (state.retries > 0 || state.connectionLost || state.notice) {
      const connected = state.connectionLost ? "Reconnected to the server." : "Connected to the server.";
      announce([connected, state.notice].filter(Boolean).join(" "), state.notice ? "warning" : "info");
      state.notice = null;
    }
    state.retries = 0;
    state.connectionLost = false;
    setConnection("live", "live");
    handleEvent(JSON.parse(message.data));
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    state.connectionLost = true;
    announce(`Lost the connection to the server (code ${event.code}); reconnecting.`, "error");
    scheduleRecovery(null);
  });
}

function closeSocket() {
  const socket = state.socket;
  state.socket = null;
  if (socket !== null) socket.close(1000, "page closed the stream");
}

// Events

function handleEvent(event) {
  state.lastSeq = event.seq;
  const job = state.jobs.get(event.job_id);
  switch (event.type) {
    case "snapshot":
      replaceJobs(event.jobs);
      break;
    case "state":
      putJob(event.job);
      break;
    case "progress":
      if (job) putJob({...job, progress: event.progress});
      break;
    case "result":
      if (job) putJob({...job, result: event.result});
      break;
    case "log":
      if (job) showLog(event);
      break;
    default:
      break;
  }
}

// Job kinds and the job form

async function loadKinds() {
  const data = await request("GET", "/api/job-kinds");
  state.kinds = new Map(data.kinds.map((kind) => [kind.name, kind]));
  const select = $("kind");
  select.replaceChildren(...data.kinds.map((kind) => el("option", {value: kind.name, text: kind.name})));
  renderKindForm();
}

function currentKind() {
  return state.kinds.get($("kind").value);
}

function renderKindForm() {
  const kind = currentKind();
  clearFormErrors();
  $("kind-description").textContent = kind ? kind.description : "";
  renderInputChoices();
  state.paramFields = new Map();
  const container = $("param-fields");
  container.replaceChildren();
  if (!kind) return;

  const schema = kind.params || {};
  const properties = Object.entries(schema.properties || {});
  for (const [name, property] of properties) {
    const field = buildField(name, property, schema);
    state.paramFields.set(name, field);
    container.append(field.element);
  }
  if (properties.length === 0) container.append(el("p", {className: "hint", text: "This kind has no parameters."}));
}

function inputsHint(kind) {
  const {min, max} = kind.inputs;
  if (max === min) return `Takes exactly ${min} file${min === 1 ? "" : "s"}.`;
  if (max === null) return min === 0 ? "Takes any number of files." : `Takes at least ${min} files.`;
  return `Takes ${min} to ${max} files.`;
}

function renderInputChoices() {
  const kind = currentKind();
  const container = $("input-choices");
  const chosen = new Set(chosenInputs());
  container.replaceChildren();
  $("inputs-hint").textContent = kind ? inputsHint(kind) : "";
  if (state.files.size === 0) {
    container.append(el("p", {className: "hint", text: "Upload a file first."}));
    return;
  }
  const type = kind && kind.inputs.max === 1 ? "radio" : "checkbox";
  for (const file of state.files.values()) {
    const id = `input-${file.file_id}`;
    const input = el("input", {type, id, name: "inputs", value: file.file_id,
      checked: chosen.has(file.file_id)});
    container.append(el("div", {className: "choice"}, input, el("label", {for: id, text: file.name})));
  }
}

function chosenInputs() {
  return [...document.querySelectorAll("#input-choices input:checked")].map((input) => input.value);
}

// Form fields from JSON Schema

function resolveSchema(schema, root) {
  if (!schema.$ref) return schema;
  const name = schema.$ref.split("/").pop();
  const {$ref, ...rest} = schema;
  return {...((root.$defs || {})[name] || {}), ...rest};
}

// Pydantic writes an optional field as anyOf [the type, {"type": "null"}], and such a field may stay empty.
function unwrapOptional(schema, root) {
  const options = schema.anyOf || schema.oneOf;
  if (!options) return {schema: resolveSchema(schema, root), optional: false};
  const rest = options.filter((option) => option.type !== "null");
  if (rest.length !== 1 || rest.length === options.length) return {schema, optional: false};
  const {anyOf, oneOf, ...outer} = schema;
  return {schema: {...resolveSchema(rest[0], root), ...outer}, optional: true};
}

function buildField(name, property, root) {
  const {schema, optional} = unwrapOptional(resolveSchema(property, root), root);
  const id = `param-${name}`;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const hint = el("p", {id: hintId, className: "hint", text: fieldHint(schema)});
  const error = el("p", {id: errorId, className: "field-error", hidden: true});
  const describedBy = `${hintId} ${errorId}`;
  const label = schema.title || name;

  let control;
  if (schema.type === "array" && schema.items && resolveSchema(schema.items, root).enum) {
    control = enumArrayControl(id, label, resolveSchema(schema.items, root).enum, schema.default, describedBy);
  } else if (schema.enum) {
    control = enumControl(id, schema, optional, describedBy);
  } else if (schema.type === "boolean" && !optional) {
    control = checkboxControl(id, schema.default, describedBy);
  } else if (schema.type === "boolean") {
    control = enumControl(id, {...schema, enum: [true, false]}, true, describedBy);
  } else if (schema.type === "integer" || schema.type === "number") {
    control = numberControl(id, schema, describedBy);
  } else if (schema.type === "string") {
    control = textControl(id, schema, describedBy);
  } else {
    control = jsonControl(id, schema, describedBy);
  }

  if (control.kind === "json") hint.textContent = `${hint.textContent} Write a JSON value.`.trim();
  const body = control.group
    ? [control.element, hint, error]
    : [el("label", {for: id, text: label}), control.element, hint, error];
  const element = el("div", {className: `field field-${control.kind}`}, ...body);
  return {name, element, error, focus: control.focus, read: control.read,
    inputs: control.inputs || [control.element]};
}

function fieldHint(schema) {
  const parts = [];
  if (schema.description) parts.push(schema.description[0].toUpperCase() + schema.description.slice(1) + ".");
  if (schema.minimum !== undefined && schema.maximum !== undefined) {
    parts.push(`From ${schema.minimum} to ${schema.maximum}.`);
  } else if (schema.minimum !== undefined) {
    parts.push(`At least ${schema.minimum}.`);
  } else if (schema.maximum !== undefined) {
    parts.push(`At most ${schema.maximum}.`);
  }
  if (schema.default !== undefined && schema.default !== null) {
    parts.push(`Default: ${Array.isArray(schema.default) ? schema.default.join(", ") : JSON.stringify(schema.default)}.`);
  }
  return parts.join(" ");
}

// Each control returns {element, read, kind}. read() returns {value}, or {} to leave the
// parameter out of the request.
class FieldError extends Error {}

function enumArrayControl(id, label, values, defaults, describedBy) {
  const chosen = new Set(defaults || []);
  const inputs = values.map((value, index) => el("input", {type: "checkbox", id: `${id}-${index}`,
    value: String(value), checked: chosen.has(value)}));
  const element = el("fieldset", {id, "aria-describedby": describedBy}, el("legend", {text: label}),
    ...inputs.map((input, index) => el("div", {className: "choice"}, input,
      el("label", {for: input.id, text: String(values[index])}))));
  const read = () => ({value: values.filter((value, index) => inputs[index].checked)});
  return {element, read, kind: "choices", group: true, inputs, focus: () => inputs[0].focus()};
}

function enumControl(id, schema, optional, describedBy) {
  const values = schema.enum;
  const hasDefault = schema.default !== undefined && schema.default !== null;
  const options = values.map((value, index) => el("option", {value: String(index), text: String(value),
    selected: hasDefault && value === schema.default}));
  const blank = optional || !hasDefault ? el("option", {value: "", text: "(not set)"}) : null;
  const element = el("select", {id, "aria-describedby": describedBy}, blank, ...options);
  const read = () => (element.value === "" ? {} : {value: values[Number(element.value)]});
  return {element, read, kind: "select", focus: () => element.focus()};
}

function checkboxControl(id, defaultValue, describedBy) {
  const element = el("input", {type: "checkbox", id, checked: defaultValue === true, "aria-describedby": describedBy});
  return {element, read: () => ({value: element.checked}), kind: "checkbox", focus: () => element.focus()};
}

function numberControl(id, schema, describedBy) {
  const integer = schema.type === "integer";
  const element = el("input", {type: "number", id, step: integer ? "1" : "any",
    min: schema.minimum, max: schema.maximum, inputmode: integer ? "numeric" : "decimal",
    value: schema.default ?? null, "aria-describedby": describedBy});
  const read = () => {
    if (element.validity.badInput) throw new FieldError("enter a number");
    if (element.value === "") return {};
    const value = Number(element.value);
    // A fraction for an integer goes to the server as typed, so its error names the value.
    return {value: integer && !Number.isInteger(value) ? element.value : value};
  };
  return {element, read, kind: "number", focus: () => element.focus()};
}

function textControl(id, schema, describedBy) {
  const element = el("input", {type: "text", id, maxlength: schema.maxLength,
    value: typeof schema.default === "string" ? schema.default : null,
    placeholder: schema.default === null ? "not set" : null, "aria-describedby": describedBy});
  const read = () => (element.value === "" ? {} : {value: element.value});
  return {element, read, kind: "text", focus: () => element.focus()};
}

function jsonControl(id, schema, describedBy) {
  const element = el("textarea", {id, rows: 2, spellcheck: "false", "aria-describedby": describedBy});
  element.value = schema.default === undefined ? "" : JSON.stringify(schema.default);
  const read = () => {
    if (element.value.trim() === "") return {};
    try {
      return {value: JSON.parse(element.value)};
    } catch (error) {
      throw new FieldError(`invalid JSON: ${error.message}`);
    }
  };
  return {element, read, kind: "json", focus: () => element.focus()};
}

function readParams() {
  const params = {};
  const errors = [];
  for (const field of state.paramFields.values()) {
    try {
      const {value} = field.read();
      if (value !== undefined) params[field.name] = value;
    } catch (error) {
      if (!(error instanceof FieldError)) throw error;
      errors.push([field, error.message]);
    }
  }
  return {params, errors};
}

// Form errors

function clearFormErrors() {
  for (const node of document.querySelectorAll("#job-form .field-error, #form-error")) {
    node.hidden = true;
    node.textContent = "";
  }
  for (const node of document.querySelectorAll("#job-form [aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showFieldError(field, message) {
  field.error.textContent = message;
  field.error.hidden = false;
  for (const input of field.inputs) input.setAttribute("aria-invalid", "true");
}

// Server messages name each invalid field as "params.NAME: message", separated by "; ".
function showServerErrors(message) {
  const form = $("form-error");
  form.textContent = message;
  form.hidden = false;
  let first = null;
  for (const match of message.matchAll(/(?:^|; )(params\.([^.:;\s]+)|timeout_s)[^:;]*: ([^;]*)/g)) {
    const [, path, name, text] = match;
    if (path === "timeout_s") {
      $("timeout-error").textContent = text;
      $("timeout-error").hidden = false;
      $("timeout").setAttribute("aria-invalid", "true");
      first = first || {focus: () => $("timeout").focus()};
      continue;
    }
    const field = state.paramFields.get(name);
    if (!field) continue;
    showFieldError(field, text);
    first = first || field;
  }
  if (first) first.focus();
}

async function submitJob(event) {
  event.preventDefault();
  clearFormErrors();
  const kind = currentKind();
  if (!kind || state.sessionId === null) return;

  const {params, errors} = readParams();
  for (const [field, message] of errors) showFieldError(field, message);
  const timeout = $("timeout");
  if (timeout.validity.badInput) {
    $("timeout-error").textContent = "enter a number of seconds";
    $("timeout-error").hidden = false;
    timeout.setAttribute("aria-invalid", "true");
  }
  if (errors.length > 0) {
    errors[0][0].focus();
    return;
  }
  if (timeout.validity.badInput) {
    timeout.focus();
    return;
  }

  const body = {kind: kind.name, inputs: chosenInputs(), params};
  if (timeout.value !== "") body.timeout_s = Number(timeout.value);
  const button = $("start");
  button.disabled = true;
  try {
    const job = await sessionRequest("POST", "/jobs", body);
    // The stream may have delivered newer states of the job already.
    if (!state.jobs.has(job.job_id)) putJob(job);
    announce(`Started ${kind.name} job ${shortId(job.job_id)}.`);
  } catch (error) {
    if (error instanceof HttpError && error.status < 500) showServerErrors(error.message);
    else report(error, "Starting the job");
  } finally {
    button.disabled = false;
  }
}

// Files and uploads

function setFiles(records) {
  state.files = new Map(records.map((record) => [record.file_id, record]));
  renderFiles();
}

function renderFiles() {
  const rows = [...state.files.values()].map((file) => {
    const url = sessionPath(`/files/${encodeURIComponent(file.file_id)}/content`);
    const download = el("a", {href: url, download: file.name, "aria-label": `Download ${file.name}`,
      text: "Download"});
    const remove = el("button", {type: "button", className: "secondary", "aria-label": `Delete ${file.name}`,
      text: "Delete"});
    remove.addEventListener("click", () => deleteFile(file));
    return el("tr", {},
      el("th", {scope: "row", text: file.name}),
      el("td", {className: "number", text: formatBytes(file.size)}),
      el("td", {text: file.content_type}),
      el("td", {className: "digest", title: file.sha256, text: `${file.sha256.slice(0, 12)}…`}),
      el("td", {className: "actions"}, download, " ", remove));
  });
  document.querySelector("#files tbody").replaceChildren(...rows);
  $("files").hidden = rows.length === 0;
  $("no-files").hidden = rows.length > 0;
  renderInputChoices();
  for (const job of state.jobs.values()) updateJobTitle(job);
}

async function deleteFile(file) {
  try {
    await sessionRequest("DELETE", `/files/${encodeURIComponent(file.file_id)}`);
    state.files.delete(file.file_id);
    renderFiles();
    announce(`Deleted ${file.name}.`);
  } catch (error) {
    report(error, `Deleting ${file.name}`);
  }
}

function addUploads(fileList) {
  for (const file of fileList) {
    const bar = el("progress", {max: 100, value: 0, "aria-label": `Upload of ${file.name}`});
    const text = el("span", {className: "upload-state", text: "waiting"});
    const item = el("li", {}, el("span", {className: "upload-name", text: file.name}), bar, text);
    $("uploads").append(item);
    state.uploadQueue.push({file, bar, text, item});
  }
  pumpUploads();
}

// Uploads run one at a time, and wait while there is no session.
async function pumpUploads() {
  if (state.uploading) return;
  state.uploading = true;
  try {
    while (state.uploadQueue.length > 0 && state.sessionId !== null) {
      await upload(state.uploadQueue.shift());
    }
  } finally {
    state.uploading = false;
  }
}

function upload(entry) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    // XMLHttpRequest, unlike fetch, reports upload progress.
    xhr.open("PUT", sessionPath(`/files/${encodeURIComponent(entry.file.name)}`));
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable || event.total === 0) return;
      const percent = Math.floor((100 * event.loaded) / event.total);
      entry.bar.value = percent;
      entry.text.textContent = `${percent} %`;
    });
    xhr.addEventListener("load", () => {
      finishUpload(entry, xhr);
      resolve();
    });
    xhr.addEventListener("error", () => {
      entry.text.textContent = "failed: cannot reach the server";
      entry.item.dataset.state = "failed";
      announce(`Uploading ${entry.file.name} failed: cannot reach the server.`, "error");
      resolve();
    });
    entry.text.textContent = "0 %";
    xhr.send(entry.file);
  });
}

function finishUpload(entry, xhr) {
  let data = null;
  try {
    data = JSON.parse(xhr.responseText);
  } catch (error) {
    data = null;
  }
  if (xhr.status === 201 && data) {
    entry.bar.value = 100;
    entry.text.textContent = "stored";
    entry.item.dataset.state = "stored";
    state.files.set(data.file_id, data);
    renderFiles();
    announce(`Uploaded ${data.name} (${formatBytes(data.size)}).`);
    return;
  }
  const message = (data && data.error && data.error.message) || `status ${xhr.status}`;
  entry.text.textContent = `failed: ${message}`;
  entry.item.dataset.state = "failed";
  announce(`Uploading ${entry.file.name} failed: ${message}`, "error");
  if (xhr.status === 401 || xhr.status === 404) {
    sessionStatus().then((status) => {
      if (status === "gone") replaceLostSession();
    }).catch(() => {});
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  // Without this, a file dropped next to the zone would replace the page.
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length > 0) addUploads(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => {
    addUploads(event.target.files);
    event.target.value = "";
  });
}

// Jobs

function replaceJobs(records) {
  const ids = new Set(records.map((record) => record.job_id));
  for (const [id, view] of state.jobViews) {
    if (!ids.has(id)) {
      view.item.remove();
      state.jobViews.delete(id);
      state.jobs.delete(id);
    }
  }
  for (const record of records) putJob(record);
  $("no-jobs").hidden = state.jobs.size > 0;
}

function putJob(job) {
  const previous = state.jobs.get(job.job_id);
  if (previous && ACTIVE_STATES.has(previous.state) && !ACTIVE_STATES.has(job.state)) {
    announce(`${job.kind} job ${shortId(job.job_id)} ${job.state.replace("_", " ")}.`,
      job.state === "succeeded" || job.state === "cancelled" ? "info" : "error");
  }
  state.jobs.set(job.job_id, job);
  let view = state.jobViews.get(job.job_id);
  if (!view) {
    view = createJobView(job);
    state.jobViews.set(job.job_id, view);
    $("jobs").prepend(view.item);
    $("no-jobs").hidden = true;
  }
  updateJobView(job, view);
}

function createJobView(job) {
  const headingId = `job-${job.job_id}-title`;
  const title = el("h3", {id: headingId});
  const stateText = el("span", {className: "job-state"});
  const bar = el("progress", {max: 100, "aria-labelledby": headingId});
  const percent = el("span", {className: "percent"});
  const message = el("span", {className: "progress-message"});
  const cancel = el("button", {type: "button", className: "cancel", "aria-describedby": headingId,
    text: "Cancel job"});
  cancel.addEventListener("click", () => cancelJob(job.job_id, cancel));
  const log = el("p", {className: "job-log", hidden: true});
  const result = el("div", {className: "job-result"});
  const item = el("li", {className: "job", id: `job-${job.job_id}`, "data-job-id": job.job_id},
    el("div", {className: "job-head"}, title, stateText),
    el("div", {className: "job-progress"}, bar, percent, message, cancel),
    log, result);
  return {item, title, stateText, bar, percent, message, cancel, log, result, shown: null};
}

function updateJobTitle(job) {
  const view = state.jobViews.get(job.job_id);
  if (!view) return;
  const names = job.inputs.map((id) => (state.files.get(id) || {name: shortId(id)}).name);
  view.title.textContent = names.length > 0 ? `${job.kind} on ${names.join(", ")}` : job.kind;
  view.title.title = `job ${job.job_id}`;
}

function jobPercent(job) {
  if (job.state === "succeeded") return 100;
  const progress = job.progress || {};
  if (!progress.total) return job.state === "queued" ? 0 : null;
  return Math.min(100, Math.floor((100 * progress.done) / progress.total));
}

function updateJobView(job, view) {
  updateJobTitle(job);
  view.item.dataset.state = job.state;
  view.stateText.textContent = job.state.replace("_", " ");
  const percent = jobPercent(job);
  if (percent === null) {
    view.bar.removeAttribute("value");
    view.percent.textContent = "";
  } else {
    view.bar.value = percent;
    view.percent.textContent = `${percent} %`;
  }
  view.message.textContent = (job.progress && job.progress.message) || "";
  view.cancel.hidden = !ACTIVE_STATES.has(job.state);

  // Results and errors are drawn once per final state, so an open report stays open.
  if (!ACTIVE_STATES.has(job.state) && view.shown !== job.state) {
    view.shown = job.state;
    view.result.replaceChildren(...renderOutcome(job));
  }
}

function showLog(event) {
  const view = state.jobViews.get(event.job_id);
  if (!view) return;
  view.log.hidden = false;
  view.log.textContent = `${event.level}: ${event.message}`;
}

async function cancelJob(jobId, button) {
  button.disabled = true;
  try {
    const job = await sessionRequest("POST", `/jobs/${encodeURIComponent(jobId)}/cancel`);
    announce(`Cancel requested for ${job.kind} job ${shortId(jobId)}.`);
  } catch (error) {
    report(error, "Cancelling the job");
  } finally {
    button.disabled = false;
  }
}

// Results

function renderOutcome(job) {
  const parts = [];
  if (job.error) {
    const type = job.error.type ? `${job.error.type}: ` : "";
    parts.push(el("p", {className: "job-error", text: `${type}${job.error.message || ""}`}));
  }
  if (job.result !== null && job.result !== undefined) {
    parts.push(...(isProfile(job.result) ? renderProfile(job) : renderJson(job.result)));
  }
  if (job.outputs && job.outputs.length > 0) parts.push(renderOutputs(job));
  return parts;
}

function isProfile(result) {
  return typeof result === "object" && Array.isArray(result.columns)
    && result.columns.every((column) => column && typeof column.name === "string" && "type" in column);
}

function renderProfile(job) {
  const report = job.result;
  const summary = [`${report.rows} rows`, `${report.columns.length} columns`];
  if (report.encoding) summary.push(`encoding ${report.encoding}`);
  if (report.delimiter) summary.push(`delimiter ${JSON.stringify(report.delimiter)}`);
  if (report.ragged_rows) summary.push(`${report.ragged_rows} ragged rows`);

  const headings = ["Column", "Type", "Nulls", "Distinct", "Min", "Max", "Mean", "Std dev", "Most frequent"];
  const rows = report.columns.map((column) => el("tr", {},
    el("th", {scope: "row", text: column.name}),
    el("td", {text: column.type}),
    el("td", {className: "number", text: formatValue(column.nulls)}),
    el("td", {className: "number", text: `${column.distinct_exact === false ? "≥ " : ""}${formatValue(column.distinct)}`}),
    el("td", {className: "number", text: formatValue(column.min)}),
    el("td", {className: "number", text: formatValue(column.max)}),
    el("td", {className: "number", text: formatValue(column.mean)}),
    el("td", {className: "number", text: formatValue(column.stddev)}),
    el("td", {text: (column.top || []).slice(0, 3).map((top) => `${top.value} (${top.count})`).join(", ")})));
  const table = el("table", {className: "profile"},
    el("caption", {text: `Columns of ${(job.inputs[0] && (state.files.get(job.inputs[0]) || {}).name) || "the file"}`}),
    el("thead", {}, el("tr", {}, ...headings.map((heading) => el("th", {scope: "col", text: heading})))),
    el("tbody", {}, ...rows));
  return [
    el("p", {className: "profile-summary", text: summary.join(" · ")}),
    el("details", {className: "report"}, el("summary", {text: "Column report"}), el("div", {className: "scroll"}, table)),
  ];
}

function renderJson(result) {
  const text = JSON.stringify(result);
  const code = el("pre", {className: "json"}, el("code", {text}));
  if (text.length <= INLINE_JSON_CHARS) return [code];
  return [el("details", {className: "report"}, el("summary", {text: "Result"}), code)];
}

function renderOutputs(job) {
  const items = job.outputs.map((output) => {
    const url = sessionPath(`/jobs/${encodeURIComponent(job.job_id)}/outputs/${encodeURIComponent(output.name)}`);
    const caption = `${output.name} (${formatBytes(output.size)})`;
    if (IMAGE_NAME.test(output.name)) {
      const image = el("img", {src: url, alt: output.name, loading: "lazy"});
      return el("li", {className: "thumbnail"},
        el("a", {href: url, download: output.name, "aria-label": `Download ${output.name}`}, image),
        el("span", {text: caption}));
    }
    return el("li", {}, el("a", {href: url, download: output.name, text: caption}));
  });
  return el("ul", {className: "outputs", "aria-label": "Outputs"}, ...items);
}

// Start

function start() {
  setUpDropZone();
  $("kind").addEventListener("change", renderKindForm);
  $("job-form").addEventListener("submit", submitJob);
  state.sessionId = sessionStorage.getItem(SESSION_KEY);
  if (state.sessionId !== null) announce(`Resuming session ${shortId(state.sessionId)}.`);
  recover();
}

start();
