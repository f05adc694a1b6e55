// The eventledger console: plain JavaScript, no build step, no library. It talks only to the
// console (same origin, /api/...); every text from the server is put in with textContent,
// never as HTML. Charts are inline SVG drawn here.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value ?? "—");
}

// A problem document as one line: its title and detail (RFC 9457).
class Problem extends Error {
  constructor(status, body) {
    const title = (body && body.title) || `HTTP ${status}`;
    const detail = body && body.detail && body.detail !== title ? `: ${body.detail}` : "";
    super(title + detail);
    this.status = status;
    this.body = body;
  }
}

// The session ended (signed out in another tab, idle, token revoked): sign in again, then
// come back here.
function toSignIn() {
  location.assign(`/signin?next=${encodeURIComponent(location.pathname)}`);
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401 && document.body.dataset.page !== "signin") toSignIn();
  if (!response.ok) throw new Problem(response.status, body);
  return body;
}

// What the signed-in principal may do (all of it on an open console): controls it may not
// use are not shown (the console refuses them anyway).
function may(scope) {
  return (document.body.dataset.scopes || "").split(" ").includes(scope);
}

function post(path, body, headers) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(headers || {}) },
    body: JSON.stringify(body),
  });
}

function showError(target, error) {
  target.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
}

function setConnection(text, ok) {
  const node = document.getElementById("connection");
  if (node) {
    node.textContent = text;
    node.className = ok ? "ok" : "error";
  }
}

// -- the live page ------------------------------------------------------------------------

const MAX_LOG_ROWS = 200;

function logRow(event) {
  return el(
    "tr",
    { "data-position": event.position, "data-type": event.type },
    el("td", { class: "num" }, event.position),
    el("td", {}, event.stream),
    el("td", { class: "num" }, event.stream_version),
    el("td", {}, event.type),
    el("td", {}, event.recorded_at),
  );
}

function addToLog(event) {
  const body = document.querySelector("#log tbody");
  if (body.querySelector(`tr[data-position="${Number(event.position)}"]`)) return;
  body.prepend(logRow(event));
  while (body.rows.length > MAX_LOG_ROWS) body.deleteRow(-1);
}

async function followLog() {
  const state = document.getElementById("log-state");
  let after = 0;
  try {
    const recent = await api("/api/events/recent?limit=50");
    for (const event of recent.events) addToLog(event);
    after = recent.head_position;
  } catch (error) {
    state.textContent = error.message;
  }
  const source = new EventSource(`/api/events/live?after=${after}`);
  source.onopen = () => {
    setConnection("live", true);
    state.textContent = "live";
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    addToLog(event);
    scheduleAccounts();
  };
  source.onerror = () => {
    setConnection("reconnecting…", false);
    state.textContent = "reconnecting…";
    // Refused (not merely cut): the browser gives up; ask why (a 401 leads to the sign-in).
    if (source.readyState === EventSource.CLOSED) api("/api/session").catch(() => {});
  };
}

let accountsTimer = null;
function scheduleAccounts() {
  if (accountsTimer === null) accountsTimer = setTimeout(loadAccounts, 300);
}

async function loadAccounts() {
  accountsTimer = null;
  const body = document.querySelector("#accounts tbody");
  try {
    const page = await api("/api/accounts?limit=100");
    body.replaceChildren(
      ...page.items.map((a) =>
        el(
          "tr",
          { "data-account": a.account_id },
          el("td", {}, el("a", { href: `/accounts/${encodeURIComponent(a.account_id)}` }, a.account_id)),
          el("td", {}, a.currency),
          el("td", { class: "num balance" }, number(a.balance)),
          el("td", {}, a.status),
          el("td", { class: "num" }, a.version),
        ),
      ),
    );
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "error" }, error.message)));
  }
}

function integer(form, name, label) {
  const text = form.elements[name].value.trim();
  if (!/^[0-9]{1,16}$/.test(text)) throw new Error(`${label} must be a whole number of minor units`);
  return Number(text);
}

function commandBody(form, command) {
  const text = (name) => form.elements[name].value.trim();
  const optional = (body, key, value) => {
    if (value) body[key] = value;
    return body;
  };
  if (command === "open") {
    const body = { currency: text("currency").toUpperCase(), overdraft_limit: integer(form, "overdraft_limit", "Overdraft limit") };
    return optional(body, "account_id", text("account_id"));
  }
  if (command === "transfer") {
    return optional(
      { from_account: text("account_id"), to_account: text("to_account"), amount: integer(form, "amount", "Amount") },
      "reference",
      text("reference"),
    );
  }
  return optional({ account_id: text("account_id"), amount: integer(form, "amount", "Amount") }, "reference", text("reference"));
}

function showFields(command) {
  for (const label of document.querySelectorAll("#command-form [data-for]")) {
    label.hidden = !label.dataset.for.split(" ").includes(command);
  }
}

async function sendCommand(form) {
  const result = document.getElementById("result");
  const command = form.elements.command.value;
  let body;
  try {
    body = commandBody(form, command);
  } catch (error) {
    showError(result, error);
    return;
  }
  result.replaceChildren(el("p", { class: "muted" }, "sending…"));
  // One key per submission: a retry of this request cannot write twice.
  const key = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  let answer;
  try {
    answer = await post(`/api/commands/${command}`, body, { "Idempotency-Key": key });
  } catch (error) {
    showError(result, error);
    return;
  }
  const r = answer.result;
  const balance =
    r.balance !== undefined ? `balance ${number(r.balance)}` : r.from_balance !== undefined ? `balances ${number(r.from_balance)} → ${number(r.to_balance)}` : `currency ${r.currency}`;
  result.replaceChildren(
    el("p", { class: "ok", id: "result-summary" }, `${command}: ${answer.account_id} — ${balance}, at position ${answer.position}`),
    el(
      "table",
      { id: "written" },
      el("thead", {}, el("tr", {}, el("th", {}, "events written"), el("th", { class: "num" }, "position"), el("th", {}, "stream"), el("th", { class: "num" }, "version"))),
      el(
        "tbody",
        {},
        ...answer.events.map((e) =>
          el("tr", {}, el("td", {}, e.type), el("td", { class: "num" }, e.position), el("td", {}, e.stream), el("td", { class: "num" }, e.stream_version)),
        ),
      ),
    ),
    el("p", { id: "catchup", class: "muted" }, `accounting: waiting to apply position ${answer.position}…`),
  );
  if (command === "open" && !form.elements.account_id.value.trim()) form.elements.account_id.value = answer.account_id;
  await catchUp(answer.account_id, answer.position);
  scheduleAccounts();
}

// The read model catches up: ask for the account as of the command's position
// (X-Min-Position), showing the read model's own position meanwhile.
async function catchUp(account, position) {
  const line = document.getElementById("catchup");
  const started = performance.now();
  const watch = setInterval(async () => {
    try {
      const models = await api("/api/readmodels");
      const accounting = models.items.find((m) => m.name === "accounting");
      if (line.dataset.done !== "1") line.textContent = `accounting at position ${accounting.position} of ${position}…`;
    } catch (_) {
      /* the answer below says what went wrong */
    }
  }, 250);
  try {
    const seen = await api(`/api/accounts/${encodeURIComponent(account)}?min_position=${position}`);
    const ms = Math.round(performance.now() - started);
    line.dataset.done = "1";
    line.className = "ok";
    line.textContent = `accounting has applied position ${position} (read model at ${seen.position}) in ${ms} ms: balance ${number(seen.balance)}`;
  } catch (error) {
    line.dataset.done = "1";
    line.className = "error";
    line.textContent = `accounting: ${error.message}`;
  } finally {
    clearInterval(watch);
  }
}

function initLive() {
  const form = document.getElementById("command-form");
  if (form) {
    // absent without ledger:write
    const select = form.elements.command;
    showFields(select.value);
    select.addEventListener("change", () => showFields(select.value));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sendCommand(form);
    });
  }
  loadAccounts();
  followLog();
}

// -- an account: its balance over time --------------------------------------------------------

function lineChart(points, { width = 720, height = 260, label = "" } = {}) {
  const pad = { left: 80, right: 20, top: 20, bottom: 40 };
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "line-chart" });
  if (points.length === 0) {
    chart.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no transactions yet"));
    return chart;
  }
  const ys = points.map((p) => p.y);
  let low = Math.min(0, ...ys);
  let high = Math.max(0, ...ys);
  if (low === high) high = low + 1;
  const x = (i) => pad.left + (points.length === 1 ? 0.5 : i / (points.length - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - low) / (high - low)) * (height - pad.top - pad.bottom);
  chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0), class: "axis" }));
  for (const v of [low, high]) {
    chart.append(svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, number(v)));
  }
  // A balance holds until the next transaction: a step line.
  let d = "";
  points.forEach((p, i) => {
    d += i === 0 ? `M${x(i)},${y(p.y)}` : `H${x(i)}V${y(p.y)}`;
  });
  chart.append(svg("path", { d, class: "series" }));
  points.forEach((p, i) => {
    const dot = svg("circle", { cx: x(i), cy: y(p.y), r: 3, class: "dot" });
    dot.append(svg("title", {}, `${p.label}: ${number(p.y)}`));
    chart.append(dot);
  });
  chart.append(svg("text", { x: pad.left, y: height - 12, class: "tick" }, points[0].label));
  chart.append(svg("text", { x: width - pad.right, y: height - 12, "text-anchor": "end", class: "tick" }, points[points.length - 1].label));
  return chart;
}

async function initAccount() {
  const id = document.body.dataset.account;
  document.getElementById("account-name").textContent = id;
  const summary = document.getElementById("account-summary");
  try {
    const account = await api(`/api/accounts/${encodeURIComponent(id)}`);
    // Two-phase transfers: what is held shows only when there is some.
    const held = account.pending_debits || account.pending_credits ? `, available ${number(account.available)} (held: ${number(account.pending_debits)} out, ${number(account.pending_credits)} in)` : "";
    summary.textContent = `${account.currency}, ${account.status}: balance ${number(account.balance)} minor units${held} (overdraft limit ${number(account.overdraft_limit)}), version ${account.version}, at position ${account.position}`;
    const history = await api(`/api/accounts/${encodeURIComponent(id)}/history`);
    const points = history.points.map((p) => ({ y: p.balance, label: p.recorded_at }));
    document.getElementById("chart").replaceChildren(lineChart(points, { label: `balance of ${id} over time` }));
    document.querySelector("#transactions tbody").replaceChildren(
      ...history.points
        .slice()
        .reverse()
        .map((p) =>
          el("tr", {}, el("td", { class: "num" }, p.position), el("td", {}, p.recorded_at), el("td", {}, p.kind), el("td", { class: "num" }, number(p.amount)), el("td", { class: "num" }, number(p.balance)), el("td", {}, p.reference ?? "")),
        ),
    );
    setConnection("", true);
  } catch (error) {
    showError(summary, error);
  }
}

// -- statistics -------------------------------------------------------------------------------

function barChart(bars, { width = 360, height = 200, label = "" } = {}) {
  const pad = { left: 10, right: 10, top: 20, bottom: 36 };
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "bar-chart" });
  const high = Math.max(1, ...bars.map((b) => Math.abs(b.value)));
  const slot = (width - pad.left - pad.right) / Math.max(1, bars.length);
  bars.forEach((b, i) => {
    const h = (Math.abs(b.value) / high) * (height - pad.top - pad.bottom);
    const x = pad.left + i * slot + slot * 0.15;
    const rect = svg("rect", { x, y: height - pad.bottom - h, width: slot * 0.7, height: Math.max(h, 0.5), class: b.value < 0 ? "bar negative" : "bar" });
    rect.append(svg("title", {}, `${b.label}: ${number(b.value)}`));
    chart.append(rect);
    if (bars.length <= 8) {
      chart.append(svg("text", { x: x + slot * 0.35, y: height - pad.bottom - h - 4, "text-anchor": "middle", class: "tick" }, number(b.value)));
      chart.append(svg("text", { x: x + slot * 0.35, y: height - 14, "text-anchor": "middle", class: "tick" }, b.label));
    }
  });
  if (bars.length > 8) {
    chart.append(svg("text", { x: pad.left, y: height - 14, class: "tick" }, bars[0].label));
    chart.append(svg("text", { x: width - pad.right, y: height - 14, "text-anchor": "end", class: "tick" }, bars[bars.length - 1].label));
  }
  return chart;
}

async function initStatistics() {
  const stats = document.getElementById("stats");
  const daily = document.getElementById("daily");
  try {
    const body = await api("/api/stats");
    const figures = Object.entries(body.currencies).map(([currency, c]) =>
      el(
        "figure",
        { "data-currency": currency },
        el("figcaption", {}, `${currency}: ${c.accounts.open} open, ${c.accounts.closed} closed, total balance ${number(c.total_balance)}`),
        barChart(
          [
            { label: "deposits", value: c.deposits.volume },
            { label: "withdrawals", value: c.withdrawals.volume },
            { label: "transfers", value: c.transfers.volume },
          ],
          { label: `${currency} volumes` },
        ),
      ),
    );
    stats.replaceChildren(...(figures.length ? figures : [el("p", { class: "muted" }, "no accounts yet")]));
  } catch (error) {
    showError(stats, error);
  }
  try {
    const body = await api("/api/stats/daily");
    const currencies = new Set(body.days.flatMap((d) => Object.keys(d.currencies)));
    const figures = [...currencies].map((currency) => {
      const bars = body.days.map((d) => {
        const c = d.currencies[currency];
        const value = c ? c.deposits.volume + c.withdrawals.volume + c.transfers.volume : 0;
        return { label: d.date, value };
      });
      return el("figure", {}, el("figcaption", {}, `${currency}: volume per day, ${body.from} to ${body.to}`), barChart(bars, { width: 720, label: `${currency} daily volume` }));
    });
    daily.replaceChildren(...(figures.length ? figures : [el("p", { class: "muted" }, "no movements in these days")]));
    setConnection("", true);
  } catch (error) {
    showError(daily, error);
  }
}

// -- read models: state, the operator's buttons, a rebuild's progress ----------------------

function readModelCard(m) {
  const card = el("div", { class: "card readmodel", id: `rm-${m.name}`, "data-state": m.state });
  const rows = [
    ["state", m.state],
    ["position", number(m.position)],
    ["head position", number(m.head_position)],
    ["lag (events)", number(m.lag)],
  ];
  if (m.halted) rows.push(["halted at", `${m.halted.position} (${m.halted.type ?? ""}): ${m.halted.reason ?? m.halted.error ?? ""}`]);
  if (m.reason) rows.push(["reason", m.reason]);
  card.append(
    el("h3", {}, m.name),
    el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: k.split(" ")[0] }, v)])),
  );
  if (m.rebuilding) {
    const until = m.rebuild_until || m.head_position || 0;
    const done = Math.min(m.position || 0, until);
    card.append(
      el("label", {}, `rebuilding: ${number(done)} of ${number(until)} `, el("progress", { class: "rebuild-progress", max: Math.max(until, 1), value: done })),
    );
  }
  const build = m.blue_green;
  const building = Boolean(build && (build.state === "building" || build.state === "switching"));
  if (build) {
    // The last blue/green rebuild: its progress while it goes on, then how it ended.
    const line = el("p", { class: "bluegreen", "data-state": build.state });
    if (building) {
      const head = Math.max(build.head || 0, 1);
      line.append(
        `blue/green: version ${build.version} ${build.state}, ${number(build.position)} of ${number(build.head)} `,
        el("progress", { class: "bluegreen-progress", max: head, value: Math.min(build.position || 0, head) }),
      );
    } else if (build.state === "done") {
      line.append(`blue/green: version ${build.version} live since ${build.finished_at ?? ""}`);
    } else {
      line.append(`blue/green: version ${build.version} failed: ${build.error ?? ""} (version ${build.from_version} serves)`);
    }
    card.append(line);
  }
  if (!may("admin")) return card; // the buttons need the admin scope
  const buttons = el("div", { class: "buttons" });
  const enabled = {
    rebuild: m.reachable && !m.rebuilding && !building,
    "rebuild-blue-green": m.reachable && !m.rebuilding && !building,
    "cancel-rebuild": m.reachable && building,
    skip: Boolean(m.halted),
    park: Boolean(m.halted),
  };
  const labels = { "rebuild-blue-green": "rebuild blue/green", "cancel-rebuild": "cancel build" };
  for (const action of Object.keys(enabled)) {
    const button = el("button", { type: "button", "data-action": action, "data-name": m.name }, labels[action] ?? action);
    button.disabled = !enabled[action];
    button.addEventListener("click", () => operate(m, action));
    buttons.append(button);
  }
  card.append(buttons);
  return card;
}

const CONFIRM = {
  rebuild: (name) => `Rebuild ${name}: drop it and replay the whole log?`,
  "rebuild-blue-green": (name) => `Build a new version of ${name} from the log beside the live one (which goes on serving)?`,
  "cancel-rebuild": (name) => `Cancel the blue/green rebuild of ${name}? (the live version stays)`,
};

async function operate(m, action) {
  const out = document.getElementById("admin-result");
  let body = {};
  if (action === "skip" || action === "park") {
    const reason = prompt(`Why ${action} the event at position ${m.halted.position}? (kept in the audit)`, "");
    if (reason === null) return;
    body = { position: m.halted.position, reason };
  } else if (!confirm(CONFIRM[action](m.name))) {
    return;
  } else if (action === "rebuild-blue-green") {
    body = { mode: "blue-green" };
  }
  const path = action === "rebuild-blue-green" ? "rebuild" : action;
  try {
    // made with the signed-in operator's own token, which the console keeps server-side
    const answer = await post(`/api/readmodels/${m.name}/${path}`, body);
    actions += 1;
    const said = action.replaceAll("-", " ").replace("blue green", "blue/green");
    out.replaceChildren(el("p", { class: "ok", id: "admin-ok" }, `${said} of ${m.name} accepted`));
    // A rebuild or cancel answers with the read model's state: show it at once.
    if (path !== "skip" && path !== "park") document.getElementById(`rm-${m.name}`).replaceWith(readModelCard(answer));
  } catch (error) {
    showError(out, error);
  }
}

// Bumped by each accepted button: a refresh asked before it would show the state before it.
let actions = 0;

async function refreshReadModels() {
  const target = document.getElementById("readmodels");
  const asked = actions;
  try {
    const body = await api("/api/readmodels");
    if (asked !== actions) return;
    target.replaceChildren(...body.items.map(readModelCard));
    setConnection("", true);
  } catch (error) {
    showError(target, error);
  }
}

function initReadModels() {
  if (may("admin")) document.getElementById("admin-note").hidden = true;
  // One refresh at a time, every 300 ms: a rebuild's progress moves visibly.
  const loop = async () => {
    await refreshReadModels();
    setTimeout(loop, 300);
  };
  loop();
}

// -- signing in and out ------------------------------------------------------------------------

// Where to go once signed in: a path of this console only (never another site).
function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return /^\/(?![\/\\])/.test(next) ? next : "/";
}

async function signIn(token) {
  const out = document.getElementById("signin-result");
  out.replaceChildren(el("p", { class: "muted" }, "signing in…"));
  try {
    await post("/api/session", { token });
  } catch (error) {
    showError(out, error);
    return;
  }
  location.assign(nextPath());
}

function initSignIn() {
  setConnection("", true);
  const form = document.getElementById("signin-form");
  if (!form) return; // an open console: nothing to sign in to
  const input = document.getElementById("signin-token");
  // A sign-in link (/signin#token=...): the fragment never reaches the server or its logs;
  // it is taken out of the address bar and history at once, then posted like the form.
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    input.value = "";
    if (token) signIn(token);
  });
  if (fragment) signIn(fragment);
}

function initSignOut() {
  const button = document.getElementById("signout");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await api("/api/session", { method: "DELETE", headers: { "Content-Type": "application/json" } });
    } finally {
      location.assign("/signin");
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  initSignOut();
  if (page === "signin") initSignIn();
  else if (page === "live") initLive();
  else if (page === "account") initAccount();
  else if (page === "statistics") initStatistics();
  else if (page === "readmodels") initReadModels();
});
