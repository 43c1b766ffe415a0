// The test client's page: renders GET _results and runs a check with POST <name>.
// Everything shown comes from the kvservice under test, so it goes into the page with
// textContent only, never innerHTML: a value holding <script> is shown as text.
"use strict";

const REFRESH_MS = 10000;
const userOpened = new Map(); // check name -> whether its steps were opened or closed by hand

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function ageText(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function stepsTable(steps) {
  const table = element("table", "steps");
  const head = table.createTHead().insertRow();
  for (const title of ["", "step", "expected", "actual", "request IDs"]) {
    head.appendChild(element("th", "", title));
  }
  const body = table.createTBody();
  for (const step of steps) {
    const state = step.passed ? "passed" : step.skipped ? "skipped" : "failed";
    const row = body.insertRow();
    row.className = `step step-${state}`;
    row.appendChild(element("td", "result", state === "passed" ? "ok" : state));
    row.appendChild(element("td", "step-name", step.step));
    row.appendChild(element("td", "expected", step.expected));
    row.appendChild(element("td", "actual", step.actual));
    row.appendChild(element("td", "request-ids", (step.request_ids || []).join(" ")));
  }
  return table;
}

function checkSection(check) {
  const section = element("section", "check");
  section.dataset.check = check.name;
  const head = element("div", "check-head");
  head.appendChild(element("span", "check-name", check.name));
  head.appendChild(element("span", "description", check.description));
  const last = check.last;
  if (last === null) {
    head.appendChild(element("span", "verdict verdict-never", "never run"));
  } else {
    const verdict = last.result.verdict;
    head.appendChild(element("span", `verdict verdict-${verdict.replace(/ /g, "-")}`, verdict));
    head.appendChild(element("span", "age", `${ageText(last.age_s)} (${last.trigger})`));
  }
  const button = element("button", "run", "Run now");
  button.type = "button";
  button.addEventListener("click", () => runCheck(check.name, button));
  head.appendChild(button);
  section.appendChild(head);
  if (last !== null) {
    const details = element("details", "result");
    const failing = last.result.steps.filter((step) => !step.passed && !step.skipped).length;
    const summary = `${last.result.steps.length} steps, ${failing} failed, ` +
      `${last.result.duration_ms} ms`;
    details.appendChild(element("summary", "", summary));
    details.appendChild(stepsTable(last.result.steps));
    details.open = userOpened.has(check.name) ? userOpened.get(check.name) : !last.result.passed;
    details.addEventListener("toggle", () => userOpened.set(check.name, details.open));
    section.appendChild(details);
  }
  return section;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

async function load() {
  try {
    const response = await fetch("_results", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`GET _results: HTTP ${response.status}`);
    const doc = await response.json();
    const main = document.getElementById("checks");
    main.replaceChildren(...doc.checks.map(checkSection));
    main.dataset.loaded = "true";
  } catch (error) {
    setStatus(`Could not load the results: ${error.message}`);
  }
}

async function runCheck(path, button) {
  const buttons = document.querySelectorAll("button");
  buttons.forEach((each) => { each.disabled = true; });
  setStatus(`running ${path}…`);
  try {
    // The status (200, 502, 503, 501) is the verdict, not an error of the request.
    const response = await fetch(path, { method: "POST", headers: { Accept: "application/json" } });
    const doc = await response.json();
    setStatus(`${path}: ${doc.verdict}`);
  } catch (error) {
    setStatus(`${path} could not run: ${error.message}`);
  }
  await load();
  document.querySelectorAll("button").forEach((each) => { each.disabled = false; });
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("run-all").addEventListener("click", (event) => {
    runCheck("test_all", event.currentTarget);
  });
  load();
  setInterval(load, REFRESH_MS);
});
