// lakepipe web UI: plain JS over the HTTP API of `lakepipe serve`. No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { topics: [], ingest: false, tables: [], table: null, page: 0, pageSize: 50, filter: null, result: null, timer: null, brokers: [], brokersBusy: false, tailNext: null, tailKey: null, tailSeq: 0, tailBusy: false, tailTimer: null };

// ---- API -------------------------------------------------------------------------------------

function token() { return localStorage.getItem("lakepipe-token") || ""; }

function askToken() {
  const d = $("#token-dialog");
  if (d.open) return;
  $("#token-input").value = "";
  d.showModal();
}

$("#token-dialog").addEventListener("close", () => {
  localStorage.setItem("lakepipe-token", $("#token-input").value.trim());
  refreshAll();
});

async function api(method, path, body, headers = {}) {
  const h = { ...headers };
  if (token()) h["Authorization"] = "Bearer " + token();
  const r = await fetch(path, { method, headers: h, body });
  if (r.status === 401) {
    askToken();
    throw Object.assign(new Error("this server needs an API token"), { status: 401 });
  }
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const message = (data && data.error) || String(data) || r.statusText;
    throw Object.assign(new Error(message), { status: r.status, data });
  }
  return { data, headers: r.headers };
}

async function sql(query, engine = "datafusion") {
  const { data, headers } = await api("POST", "/query", JSON.stringify({ sql: query, engine, format: "json" }), { "Content-Type": "application/json" });
  return { rows: data, truncated: headers.get("x-lakepipe-truncated") };
}

const quote = (v) => "'" + String(v).replace(/'/g, "''") + "'";
const ident = (v) => '"' + String(v).replace(/"/g, '""') + '"';

// ---- rendering helpers ------------------------------------------------------------------------

function columnsOf(rows) {
  const cols = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  return cols;
}

function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function renderTable(el, rows, opts = {}) {
  el.innerHTML = "";
  const cols = opts.columns || columnsOf(rows);
  if (!cols.length) { el.innerHTML = "<tbody><tr><td class='muted'>no rows</td></tr></tbody>"; return; }
  const thead = el.createTHead().insertRow();
  for (const c of cols) { const th = document.createElement("th"); th.textContent = c; thead.appendChild(th); }
  const body = el.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of cols) {
      const td = tr.insertCell();
      const v = r[c];
      td.textContent = fmt(v);
      td.title = fmt(v);
      if (typeof v === "number") td.className = "num";
      if (opts.payload && opts.payload.includes(c)) td.className = "payload";
    }
  }
  if (!rows.length) { const tr = body.insertRow(); const td = tr.insertCell(); td.colSpan = cols.length; td.className = "muted"; td.textContent = "no rows"; }
}

function setResult(el, ok, text) {
  el.className = "result " + (ok ? "ok" : "bad");
  el.textContent = text;
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  if (isNaN(d)) return String(ts);
  const ago = Math.round((Date.now() - d.getTime()) / 1000);
  const rel = ago < 60 ? ago + " s ago" : ago < 3600 ? Math.round(ago / 60) + " min ago" : ago < 86400 ? Math.round(ago / 3600) + " h ago" : Math.round(ago / 86400) + " d ago";
  return d.toISOString().replace(".000", "") + " (" + rel + ")";
}

// ---- tabs -------------------------------------------------------------------------------------

function show(tab) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  document.querySelectorAll("section.tab").forEach((s) => s.classList.toggle("hidden", s.id !== tab));
  clearInterval(state.timer);
  clearInterval(state.tailTimer);
  $("#tail-follow").checked = false;
  if (tab === "overview") { loadOverview(); state.timer = setInterval(loadOverview, 2000); }
  if (tab === "brokers") { loadBrokers(); state.timer = setInterval(loadBrokers, 5000); }
  if (tab === "tables") loadTables();
  if (tab === "dead") loadDeadChoices();
  location.hash = tab;
}
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));

// ---- overview ---------------------------------------------------------------------------------

async function loadOverview() {
  try {
    const [{ data: tables }, health] = await Promise.all([api("GET", "/tables"), api("GET", "/health").catch((e) => ({ data: e.data || { brokers: [] } }))]);
    state.tables = tables;
    const names = tables.map((t) => t.name);
    let dead = {}, fresh = {};
    if (names.includes("dead_letters")) {
      const { rows } = await sql("SELECT _topic, count(*) AS n FROM dead_letters GROUP BY _topic");
      for (const r of rows) dead[r._topic] = r.n;
    }
    try {
      const { rows } = await sql("SELECT table_name, sum(lag) AS lag, max(last_commit) AS last_commit, max(newest_event_time) AS newest FROM freshness() GROUP BY table_name");
      for (const r of rows) fresh[r.table_name] = r;
    } catch (e) { /* freshness needs topic tables; an empty lake has none */ }
    const rows = tables.map((t) => ({
      table: t.name,
      rows: t.rows,
      "dead letters": t.name === "dead_letters" ? "" : (dead[t.name] || 0),
      version: t.version,
      "last commit": when((fresh[t.name] || {}).last_commit),
      lag: (fresh[t.name] || {}).lag ?? "",
      "newest event": (fresh[t.name] || {}).newest || "",
    }));
    renderTable($("#overview-table"), rows);
    const brokers = (health.data.brokers || []).map((b) => ({
      broker: b.name, address: b.address, breaker: b.breaker, "batches ok": b.batches_ok, failed: b.batches_failed,
      "avg latency": b.batches_ok ? b.avg_latency_ms.toFixed(1) + " ms" : "", "last error": b.last_error || "",
    }));
    renderTable($("#breakers"), brokers, { columns: ["broker", "address", "breaker", "batches ok", "failed", "avg latency", "last error"] });
    $("#breakers").querySelectorAll("tbody tr").forEach((tr, i) => { if (brokers[i]) tr.cells[2].className = "state-" + brokers[i].breaker; });
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
  }
}

// ---- data entry -------------------------------------------------------------------------------

function topicSpec() { return state.topics.find((t) => t.name === $("#entry-topic").value); }

function inputFor(field) {
  let el;
  if (field.allowed) {
    el = document.createElement("select");
    el.appendChild(new Option("", ""));
    for (const v of field.allowed) el.appendChild(new Option(v, v));
  } else if (field.type === "boolean") {
    el = document.createElement("select");
    for (const v of ["", "true", "false"]) el.appendChild(new Option(v, v));
  } else if (field.type === "json") {
    el = document.createElement("textarea");
    el.rows = 2;
    el.placeholder = field.object_only ? "{ … }" : "JSON";
  } else {
    el = document.createElement("input");
    if (field.type === "long" || field.type === "double" || field.type === "decimal") { el.inputMode = "decimal"; el.placeholder = field.type; }
    else if (field.type === "timestamp") { el.placeholder = "2026-01-01T10:00:00Z"; }
    else if (field.pattern) { el.placeholder = field.pattern; }
  }
  el.name = field.name;
  el.id = "field-" + field.name;
  return el;
}

function renderForm() {
  const form = $("#entry-form");
  form.innerHTML = "";
  const spec = topicSpec();
  if (!spec) return;
  for (const f of spec.fields) {
    const label = document.createElement("label");
    label.textContent = f.name;
    label.htmlFor = "field-" + f.name;
    if (f.required) label.className = "req";
    form.append(label, inputFor(f));
    if (f.name === spec.partition_time) form.querySelector("#" + CSS.escape("field-" + f.name)).value = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  }
  $("#entry-note").textContent = "key: " + spec.key.join(", ") + " · newest by " + spec.precombine + " · * required";
  setResult($("#entry-result"), true, "");
}

// Validate in the page with the spec's rules; returns the record or null (errors shown).
function readForm() {
  const spec = topicSpec();
  const form = $("#entry-form");
  form.querySelectorAll(".field-error").forEach((e) => e.remove());
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  const record = {};
  let ok = true;
  for (const f of spec.fields) {
    const el = form.querySelector("#" + CSS.escape("field-" + f.name));
    const raw = el.value.trim();
    let err = null, value;
    if (raw === "") {
      if (f.required) err = "required";
    } else if (f.type === "long") {
      if (!/^-?\d+$/.test(raw)) err = "a whole number"; else value = { __raw: raw.replace(/^(-?)0+(?=\d)/, "$1") };
      if (!err && f.min != null && BigInt(raw) < BigInt(f.min)) err = "at least " + f.min;
      if (!err && f.max != null && BigInt(raw) > BigInt(f.max)) err = "at most " + f.max;
    } else if (f.type === "double" || f.type === "decimal") {
      if (!/^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(raw)) err = "a number"; else value = f.type === "decimal" ? { __raw: raw } : Number(raw);
      const n = Number(raw);
      if (!err && f.min != null && n < Number(f.min)) err = "at least " + f.min;
      if (!err && f.max != null && n > Number(f.max)) err = "at most " + f.max;
      if (!err && f.type === "decimal" && raw.includes(".") && raw.split(".")[1].length > f.scale) err = "at most " + f.scale + " decimals";
    } else if (f.type === "boolean") {
      value = raw === "true";
    } else if (f.type === "timestamp") {
      if (/^\d+$/.test(raw)) value = Number(raw);
      else if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(raw) && !isNaN(Date.parse(raw))) value = raw;
      else err = "RFC 3339 with Z or an offset, or epoch milliseconds";
    } else if (f.type === "json") {
      try { value = JSON.parse(raw); } catch { err = "valid JSON"; }
      if (!err && f.object_only && (typeof value !== "object" || Array.isArray(value) || value === null)) err = "a JSON object";
    } else {
      value = raw;
      if (f.allowed && !f.allowed.includes(raw)) err = "one of " + f.allowed.join(", ");
      if (!err && f.pattern && !new RegExp("^(?:" + f.pattern + ")$").test(raw)) err = "matching " + f.pattern;
    }
    if (err) {
      ok = false;
      el.classList.add("invalid");
      const msg = document.createElement("div");
      msg.className = "field-error";
      msg.textContent = f.name + ": " + err;
      el.after(msg);
    } else if (value !== undefined) {
      record[f.name] = value;
    }
  }
  return ok ? record : null;
}

// Decimals go out as JSON numbers with their exact text.
function toJson(record) {
  return JSON.stringify(record, (k, v) => (v && v.__raw ? "\u0000" + v.__raw + "\u0000" : v)).replace(/"\\u0000([^"\\]*)\\u0000"/g, "$1");
}

$("#entry-topic").addEventListener("change", renderForm);

$("#entry-submit").addEventListener("click", async () => {
  const record = readForm();
  if (!record) { setResult($("#entry-result"), false, "fix the marked fields"); return; }
  try {
    const { data } = await api("POST", "/topics/" + encodeURIComponent(topicSpec().name) + "/records", toJson(record), { "Content-Type": "application/json" });
    setResult($("#entry-result"), true, "published " + data.published + " record (acknowledged by " + Object.keys(data.per_broker).join(", ") + ")");
  } catch (e) {
    const details = e.data && e.data.errors ? ": " + e.data.errors.map((x) => x.error).join("; ") : "";
    setResult($("#entry-result"), false, e.message + details);
  }
});

$("#bulk-upload").addEventListener("click", async () => {
  const file = $("#bulk-file").files[0];
  const report = $("#bulk-report");
  report.innerHTML = "";
  if (!file) { setResult($("#bulk-result"), false, "choose a file first"); return; }
  const text = await file.text();
  const csv = /\.csv$/i.test(file.name);
  try {
    const { data } = await api("POST", "/topics/" + encodeURIComponent(topicSpec().name) + "/records", text, { "Content-Type": csv ? "text/csv" : "application/x-ndjson" });
    setResult($("#bulk-result"), true, "published " + data.published + " records from " + file.name);
  } catch (e) {
    setResult($("#bulk-result"), false, e.message);
    for (const x of (e.data && e.data.errors) || []) {
      const li = document.createElement("li");
      li.textContent = file.name + " line " + x.line + ": " + x.error;
      report.appendChild(li);
    }
  }
});

$("#gen-button").addEventListener("click", async () => {
  const n = Number($("#gen-count").value);
  try {
    const { data } = await api("POST", "/topics/" + encodeURIComponent(topicSpec().name) + "/generate?count=" + n, null, { "X-Lakepipe-Action": "generate" });
    setResult($("#gen-result"), true, "generated and published " + data.published + " records");
  } catch (e) {
    setResult($("#gen-result"), false, e.message);
  }
});

async function loadTopics() {
  const { data } = await api("GET", "/api/topics");
  state.topics = data.topics;
  state.ingest = data.ingest;
  const sel = $("#entry-topic");
  const current = sel.value;
  sel.innerHTML = "";
  for (const t of data.topics) sel.appendChild(new Option(t.name, t.name));
  if (current) sel.value = current;
  renderForm();
  for (const id of ["#entry-submit", "#bulk-upload", "#gen-button"]) $(id).disabled = !data.ingest;
  if (!data.ingest) $("#entry-note").textContent = "HTTP ingest is off: start the server with --brokers or --primary";
}

// ---- tables -----------------------------------------------------------------------------------

async function loadTables() {
  try {
    const { data } = await api("GET", "/tables");
    state.tables = data;
    const sel = $("#table-select");
    const current = sel.value;
    sel.innerHTML = "";
    for (const t of data) sel.appendChild(new Option(t.name, t.name));
    if (current && data.some((t) => t.name === current)) sel.value = current;
    await selectTable();
  } catch (e) { $("#table-meta").textContent = e.message; }
}

async function selectTable() {
  const t = state.tables.find((x) => x.name === $("#table-select").value);
  state.table = t;
  state.page = 0;
  state.filter = null;
  if (!t) return;
  $("#table-meta").textContent = t.rows + " rows · " + t.files + " files · " + (t.size_bytes / 1024).toFixed(1) + " KiB · version " + t.version + (t.partition_columns.length ? " · partitioned by " + t.partition_columns.join(", ") : "");
  renderTable($("#table-schema"), t.schema.map((c) => ({ column: c.name, type: c.type, nullable: c.nullable ? "yes" : "" })));
  const cols = $("#filter-col");
  cols.innerHTML = "";
  for (const c of t.schema) cols.appendChild(new Option(c.name, c.name));
  if (t.partition_columns.length) {
    const p = t.partition_columns.map(ident).join(", ");
    sql("SELECT " + p + ", count(*) AS rows FROM " + ident(t.name) + " GROUP BY " + p + " ORDER BY " + p).then(({ rows }) => renderTable($("#table-partitions"), rows)).catch(() => {});
  } else {
    renderTable($("#table-partitions"), []);
  }
  api("GET", "/tables/" + encodeURIComponent(t.name) + "/history").then(({ data }) => renderTable($("#table-history"), data.slice().reverse())).catch(() => {});
  renderTable($("#key-history"), []);
  await loadRows();
}

async function loadRows() {
  const t = state.table;
  if (!t) return;
  const where = state.filter ? " WHERE " + state.filter : "";
  const spec = state.topics.find((s) => s.name === t.name);
  const order = (spec ? spec.key : t.name === "dead_letters" ? ["_topic", "_partition", "_offset"] : [t.schema[0].name]).map(ident).join(", ");
  const q = "SELECT * FROM " + ident(t.name) + where + " ORDER BY " + order + " LIMIT " + (state.pageSize + 1) + " OFFSET " + state.page * state.pageSize;
  try {
    const { rows } = await sql(q);
    renderTable($("#table-rows"), rows.slice(0, state.pageSize), { columns: t.schema.map((c) => c.name) });
    $("#page-info").textContent = " page " + (state.page + 1) + " ";
    $("#page-prev").disabled = state.page === 0;
    $("#page-next").disabled = rows.length <= state.pageSize;
  } catch (e) {
    renderTable($("#table-rows"), [{ error: e.message }]);
  }
}

$("#table-select").addEventListener("change", selectTable);
$("#filter-apply").addEventListener("click", () => {
  const col = $("#filter-col").value, op = $("#filter-op").value, val = $("#filter-val").value;
  const type = (state.table.schema.find((c) => c.name === col) || {}).type || "";
  const numeric = /^(long|integer|short|byte|double|float|decimal)/.test(type) && val.trim() !== "" && !isNaN(Number(val));
  state.filter = op === "LIKE" ? "CAST(" + ident(col) + " AS VARCHAR) LIKE " + quote(val) : (numeric ? ident(col) + " " + op + " " + Number(val) : "CAST(" + ident(col) + " AS VARCHAR) " + op + " " + quote(val));
  state.page = 0;
  loadRows();
});
$("#filter-clear").addEventListener("click", () => { state.filter = null; state.page = 0; $("#filter-val").value = ""; loadRows(); });
$("#page-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); loadRows(); });
$("#page-next").addEventListener("click", () => { state.page += 1; loadRows(); });

$("#key-lookup").addEventListener("click", async () => {
  const t = state.table;
  const spec = state.topics.find((s) => s.name === t.name);
  const keyCol = spec ? spec.key[0] : t.schema[0].name;
  const q = "SELECT * FROM changes(" + quote(t.name) + ", 0) WHERE CAST(" + ident(keyCol) + " AS VARCHAR) = " + quote($("#key-input").value.trim()) + " ORDER BY _commit_version, _change_type";
  try {
    const { rows } = await sql(q);
    const first = ["_commit_version", "_commit_timestamp", "_change_type"];
    const cols = first.concat(columnsOf(rows).filter((c) => !first.includes(c)));
    renderTable($("#key-history"), rows, { columns: cols });
  } catch (e) {
    renderTable($("#key-history"), [{ error: e.message }]);
  }
});

// ---- dead letters -----------------------------------------------------------------------------

async function loadDeadChoices() {
  try {
    const { rows } = await sql("SELECT DISTINCT _topic, error_kind FROM dead_letters ORDER BY _topic, error_kind");
    const topics = [...new Set(rows.map((r) => r._topic))], kinds = [...new Set(rows.map((r) => r.error_kind))].sort();
    for (const [sel, values] of [[$("#dead-topic"), topics], [$("#dead-kind"), kinds]]) {
      const current = sel.value;
      sel.innerHTML = "<option value=''>all</option>";
      for (const v of values) sel.appendChild(new Option(v, v));
      sel.value = values.includes(current) ? current : "";
    }
    await loadDead();
  } catch (e) {
    renderTable($("#dead-rows"), [{ note: e.status === 400 ? "no dead letters yet" : e.message }]);
  }
}

async function loadDead() {
  const conds = [];
  if ($("#dead-topic").value) conds.push("_topic = " + quote($("#dead-topic").value));
  if ($("#dead-kind").value) conds.push("error_kind = " + quote($("#dead-kind").value));
  const q = "SELECT _topic, _partition, _offset, error_kind, error_message, payload_text FROM dead_letters" + (conds.length ? " WHERE " + conds.join(" AND ") : "") + " ORDER BY _topic, _partition, _offset LIMIT 500";
  try {
    const { rows } = await sql(q);
    renderTable($("#dead-rows"), rows, { columns: ["_topic", "_partition", "_offset", "error_kind", "error_message", "payload_text"], payload: ["payload_text"] });
  } catch (e) {
    renderTable($("#dead-rows"), [{ error: e.message }]);
  }
}
$("#dead-load").addEventListener("click", loadDead);

// ---- SQL console ------------------------------------------------------------------------------

async function loadExamples() {
  const { data } = await api("GET", "/api/examples");
  const box = $("#examples");
  box.innerHTML = "<span class='muted'>Examples:</span>";
  for (const ex of data) {
    const b = document.createElement("button");
    b.className = "plain example";
    b.textContent = ex.name;
    b.addEventListener("click", () => { $("#sql-editor").value = ex.sql; runSql(); });
    box.appendChild(b);
  }
}

async function runSql() {
  const err = $("#sql-error");
  err.classList.add("hidden");
  $("#chart").innerHTML = "";
  $("#sql-info").textContent = "running…";
  const started = performance.now();
  try {
    const { rows, truncated } = await sql($("#sql-editor").value, $("#sql-engine").value);
    state.result = rows;
    renderTable($("#sql-result"), rows);
    $("#sql-info").textContent = rows.length + " rows in " + ((performance.now() - started) / 1000).toFixed(2) + " s" + (truncated ? " (" + truncated + ")" : "");
  } catch (e) {
    state.result = null;
    renderTable($("#sql-result"), []);
    err.textContent = e.message;
    err.classList.remove("hidden");
    $("#sql-info").textContent = "";
  }
}
$("#sql-run").addEventListener("click", runSql);
$("#sql-editor").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql(); } });

function csvCell(v) {
  const s = fmt(v);
  return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

$("#sql-export").addEventListener("click", () => {
  const rows = state.result || [];
  const cols = columnsOf(rows);
  const text = [cols.join(","), ...rows.map((r) => cols.map((c) => csvCell(r[c])).join(","))].join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  a.download = "lakepipe-result.csv";
  a.click();
  URL.revokeObjectURL(a.href);
});

const isTime = (v) => typeof v === "string" && /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$/.test(v);

// One chart from the result: x is the first time column (else the first column); every numeric
// column is a series (first few). Drawn as SVG.
function chart(kind) {
  const rows = state.result || [];
  const box = $("#chart");
  box.innerHTML = "";
  if (!rows.length) { box.textContent = "run a query first"; return; }
  const cols = columnsOf(rows);
  const xCol = cols.find((c) => rows.every((r) => r[c] == null || isTime(r[c]))) || cols[0];
  const numeric = (c) => c !== xCol && rows.some((r) => r[c] != null) && rows.every((r) => r[c] == null || (r[c] !== "" && !isNaN(Number(r[c]))));
  const series = cols.filter(numeric).slice(0, 4);
  if (!series.length) { box.textContent = "no numeric column to chart"; return; }
  const time = isTime(rows[0][xCol]);
  // Group by x (a result may have several rows per x, e.g. per currency): sum per x.
  const xs = [], sums = new Map();
  for (const r of rows) {
    const x = fmt(r[xCol]);
    if (!sums.has(x)) { sums.set(x, series.map(() => 0)); xs.push(x); }
    series.forEach((s, i) => (sums.get(x)[i] += Number(r[s] || 0)));
  }
  if (time) xs.sort((a, b) => Date.parse(a.replace(" ", "T")) - Date.parse(b.replace(" ", "T")));
  const W = 860, H = 300, L = 60, R = 20, T = 20, B = 50;
  const max = Math.max(...xs.flatMap((x) => sums.get(x)), 0), min = Math.min(...xs.flatMap((x) => sums.get(x)), 0);
  const y = (v) => T + (H - T - B) * (1 - (v - min) / ((max - min) || 1));
  const step = (W - L - R) / Math.max(xs.length, 1);
  const xAt = (i) => L + step * (i + 0.5);
  const colors = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9"];
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("data-kind", kind); svg.setAttribute("data-x", xCol);
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text != null) e.textContent = text; svg.appendChild(e); return e; };
  add("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  for (const v of [min, (min + max) / 2, max]) add("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, Number(v.toPrecision(4)).toLocaleString());
  const every = Math.ceil(xs.length / 12);
  xs.forEach((x, i) => { if (i % every === 0) add("text", { x: xAt(i), y: H - B + 16, "text-anchor": "middle" }, x.length > 16 ? x.slice(0, 16) : x); });
  add("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }, xCol + (time ? " (time)" : ""));
  series.forEach((s, si) => {
    if (kind === "line") {
      const d = xs.map((x, i) => (i ? "L" : "M") + xAt(i).toFixed(1) + "," + y(sums.get(x)[si]).toFixed(1)).join(" ");
      add("path", { d, fill: "none", stroke: colors[si], "stroke-width": 2, class: "series" });
    } else {
      const w = (step * 0.8) / series.length;
      xs.forEach((x, i) => {
        const v = sums.get(x)[si];
        add("rect", { x: xAt(i) - step * 0.4 + w * si, y: Math.min(y(v), y(0)), width: Math.max(w - 1, 1), height: Math.abs(y(0) - y(v)), fill: colors[si], class: "series" });
      });
    }
    add("text", { x: L + 10 + si * 160, y: T - 6, style: "fill:" + colors[si] }, "■ " + s);
  });
  box.appendChild(svg);
}
$("#chart-line").addEventListener("click", () => chart("line"));
$("#chart-bar").addEventListener("click", () => chart("bar"));

// ---- brokers ----------------------------------------------------------------------------------

function brokerBlock(b) {
  const box = document.createElement("div");
  box.className = "broker";
  box.dataset.broker = b.name;
  const h = document.createElement("h3");
  h.textContent = b.name + " · " + b.address + " · lake offsets under source “" + b.source_name + "”";
  box.appendChild(h);
  const note = (text) => { const p = document.createElement("p"); p.className = "error"; p.textContent = text; box.appendChild(p); };
  if (b.error) { note(b.error); return box; }
  if (b.lake_error) note("lake offsets unavailable: " + b.lake_error);
  const topics = [];
  for (const t of b.topics || []) for (const p of t.partitions) topics.push({ topic: t.name, partition: p.partition, start: p.start ?? "", end: p.end ?? "no answer", offsets: p.end != null && p.start != null ? p.end - p.start : "" });
  const tt = document.createElement("table");
  tt.className = "grid small topics";
  renderTable(tt, topics, { columns: ["topic", "partition", "start", "end", "offsets"] });
  const h2 = document.createElement("h3"); h2.textContent = "Topics and partitions"; box.appendChild(h2); box.appendChild(tt);
  const groups = [];
  for (const g of b.groups || []) {
    if (!g.partitions.length) groups.push({ group: g.name, state: g.state ?? "", members: g.members ?? "" });
    for (const p of g.partitions) groups.push({ group: g.name, state: g.state ?? "", members: g.members ?? "", topic: p.topic, partition: p.partition, "broker offset": p.broker_offset ?? "", "lake offset": p.lake_offset ?? "", end: p.end ?? "", lag: p.lag ?? "" });
  }
  const gt = document.createElement("table");
  gt.className = "grid small groups";
  const cols = ["group", "state", "members", "topic", "partition", "broker offset", "lake offset", "end", "lag"];
  renderTable(gt, groups, { columns: cols });
  gt.querySelectorAll("tbody tr").forEach((tr, i) => { if (groups[i] && groups[i].lag > 0) tr.cells[cols.indexOf("lag")].classList.add("lagging"); });
  const h3 = document.createElement("h3"); h3.textContent = "Consumer groups"; box.appendChild(h3); box.appendChild(gt);
  if (b.groups_error) note("the broker's group list: " + b.groups_error);
  return box;
}

// The brokers, with only the topics and groups whose names contain the filter's text.
function renderBrokers() {
  const text = $("#brokers-filter").value.trim();
  const list = $("#brokers-list");
  list.innerHTML = "";
  if (!state.brokers.length) list.textContent = "No broker: start serve with --brokers, --primary or an iggy setting.";
  for (const b of state.brokers) {
    const shown = !text ? b : {
      ...b,
      topics: (b.topics || []).filter((t) => t.name.includes(text)),
      groups: (b.groups || []).filter((g) => g.name.includes(text) || g.partitions.some((p) => p.topic.includes(text))),
    };
    list.appendChild(brokerBlock(shown));
  }
}
$("#brokers-filter").addEventListener("input", renderBrokers);

async function loadBrokers() {
  // One at a time: a slow broker must not pile up requests (each holds a query turn).
  if (state.brokersBusy) return;
  state.brokersBusy = true;
  try {
    const { data } = await api("GET", "/api/brokers");
    state.brokers = data.brokers;
    renderBrokers();
    fillTailChoices();
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
  } finally {
    state.brokersBusy = false;
  }
}

function keepChoice(sel, values, first) {
  const old = sel.value;
  sel.innerHTML = "";
  if (first) sel.appendChild(new Option(first[1], first[0]));
  for (const v of values) sel.appendChild(new Option(String(v), String(v)));
  if ([...sel.options].some((o) => o.value === old)) sel.value = old;
}

function fillTailChoices() {
  const brokers = state.brokers || [];
  keepChoice($("#tail-broker"), brokers.map((b) => b.name));
  const b = brokers.find((x) => x.name === $("#tail-broker").value);
  keepChoice($("#tail-topic"), ((b && b.topics) || []).map((t) => t.name));
  const t = ((b && b.topics) || []).find((x) => x.name === $("#tail-topic").value);
  keepChoice($("#tail-partition"), ((t && t.partitions) || []).map((p) => p.partition), ["", "all"]);
  // A cursor belongs to the broker, topic, partition and page size it was read with.
  if (state.tailKey !== tailKey()) { state.tailNext = null; $("#tail-older").disabled = true; }
}
const tailKey = () => [$("#tail-broker").value, $("#tail-topic").value, $("#tail-partition").value, $("#tail-limit").value].join("\u0000");
for (const id of ["#tail-broker", "#tail-topic", "#tail-partition", "#tail-limit"]) $(id).addEventListener("change", fillTailChoices);

async function loadTail(older) {
  const broker = $("#tail-broker").value, topic = $("#tail-topic").value;
  if (!broker || !topic) { $("#tail-info").textContent = "pick a broker and a topic"; return; }
  const q = new URLSearchParams({ limit: $("#tail-limit").value });
  if ($("#tail-partition").value !== "") q.set("partition", $("#tail-partition").value);
  if (older && state.tailNext && state.tailKey === tailKey()) q.set("before", state.tailNext);
  // Following skips a tick while a read is under way; a newer read's answer wins.
  if (!older && state.tailBusy && $("#tail-follow").checked) return;
  const seq = ++state.tailSeq, key = tailKey();
  state.tailBusy = true;
  $("#tail-info").textContent = "reading…";
  try {
    const { data } = await api("GET", "/api/brokers/" + encodeURIComponent(broker) + "/topics/" + encodeURIComponent(topic) + "/messages?" + q);
    if (seq !== state.tailSeq) return;
    state.tailNext = data.next;
    state.tailKey = key;
    $("#tail-older").disabled = !data.next;
    const rows = data.messages.map((m) => ({
      partition: m.partition, offset: m.offset, timestamp: m.timestamp || "", key: m.key ?? "",
      check: !m.validation ? "no spec" : m.validation.valid ? "valid" : m.validation.kind + ": " + m.validation.error,
      payload: m.tombstone ? "(delete)" : m.payload + (m.payload_truncated ? " …" : ""),
    }));
    const table = $("#tail-rows");
    renderTable(table, rows, { columns: ["partition", "offset", "timestamp", "key", "check", "payload"], payload: ["payload"] });
    table.querySelectorAll("tbody tr").forEach((tr, i) => {
      const m = data.messages[i];
      if (!m || !m.validation) return;
      tr.classList.toggle("invalid", !m.validation.valid);
      tr.cells[4].className = m.validation.valid ? "verdict-ok" : "verdict-bad";
    });
    const bad = data.messages.filter((m) => m.validation && !m.validation.valid).length;
    const gaps = data.incomplete.map((i) => "partition " + i.partition + ": " + i.reason).join("; ");
    $("#tail-info").textContent = data.messages.length + " messages, " + bad + " invalid" + (older ? " (older page)" : " (latest)") + (gaps ? " · not read whole: " + gaps : "");
  } catch (e) {
    if (seq === state.tailSeq) $("#tail-info").textContent = "error: " + e.message;
  } finally {
    if (seq === state.tailSeq) state.tailBusy = false;
  }
}
$("#brokers-refresh").addEventListener("click", loadBrokers);
$("#tail-latest").addEventListener("click", () => loadTail(false));
$("#tail-older").addEventListener("click", () => loadTail(true));
$("#tail-follow").addEventListener("change", (e) => {
  clearInterval(state.tailTimer);
  if (e.target.checked) { loadTail(false); state.tailTimer = setInterval(() => loadTail(false), 3000); }
});

// ---- start ------------------------------------------------------------------------------------

async function refreshAll() {
  try { await Promise.all([loadTopics(), loadExamples()]); } catch (e) { $("#status").textContent = e.message; }
  const tab = (location.hash || "#overview").slice(1);
  show(["overview", "entry", "tables", "dead", "sql", "brokers"].includes(tab) ? tab : "overview");
}
refreshAll();
