// The jaxserve playground: chat over /v1/chat/completions (streamed), the sampler's knobs, a
// constraint panel, a token view coloured by probability, and live engine numbers from /metrics.
// Plain browser JavaScript, no build step and no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "jaxserve.apiKey"; // sessionStorage only: gone when the tab closes
const NUMBERS = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "seed", "max_tokens"];
const CONSTRAINT_PARAMS = ["response_format", "json_schema", "regex", "grammar", "choice"];
const state = { messages: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || { message: JSON.stringify(body) };
  } catch {
    return { message: `${response.status} ${response.statusText}` };
  }
}

function showError(error, where) {
  const box = where ? $(where) : (CONSTRAINT_PARAMS.includes(error.param) ? $("constraint-error") : $("error"));
  box.textContent = error.param ? `${error.message} (${error.param})` : error.message;
  box.hidden = false;
}

function clearErrors() {
  for (const id of ["error", "constraint-error"]) { $(id).hidden = true; $(id).textContent = ""; }
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) { showError(await errorOf(response)); return; }
    const select = $("model");
    const chosen = select.value;
    select.innerHTML = "";
    for (const model of (await response.json()).data) {
      const option = document.createElement("option");
      option.value = option.textContent = model.id;
      select.appendChild(option);
    }
    if (chosen) select.value = chosen;
    clearErrors();
  } catch (e) {
    showError({ message: String(e) });
  }
}

function requestBody() {
  const body = { model: $("model").value, messages: state.messages, stream: true,
                 logprobs: true, top_logprobs: 5 };
  for (const id of NUMBERS) {
    const value = $(id).value;
    if (value !== "") body[id] = Number(value);
  }
  const stop = $("stop-strings").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stop.length) body.stop = stop;
  const kind = $("constraint-kind").value;
  const text = $("constraint-text").value;
  if (kind === "json_schema") {
    let schema;
    try { schema = JSON.parse(text); } catch (e) {
      throw { param: "response_format", message: "The schema is not valid JSON: " + e.message };
    }
    body.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
  } else if (kind === "regex") {
    body.regex = text;
  } else if (kind === "grammar") {
    body.grammar = text;
  } else if (kind === "choice") {
    body.choice = text.split("\n").map((s) => s.trim()).filter(Boolean);
  }
  return body;
}

function bubble(role) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  $("messages").appendChild(div);
  return div;
}

// Colour of one token: its probability (red -> green), or the entropy of its top alternatives.
function colour(entry) {
  const p = Math.exp(entry.logprob);
  if (!$("view-entropy").checked) return `hsl(${Math.round(120 * p)}, 70%, 85%)`;
  let h = 0;
  for (const alt of entry.top_logprobs || []) h -= Math.exp(alt.logprob) * alt.logprob;
  return `hsl(${Math.round(120 * Math.max(0, 1 - h / 3))}, 70%, 85%)`;
}

function tokenSpan(entry) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = entry.token;
  span.dataset.p = Math.exp(entry.logprob).toFixed(4);
  span.style.background = colour(entry);
  const alts = (entry.top_logprobs || []).map(
    (a) => `${JSON.stringify(a.token)}  ${(100 * Math.exp(a.logprob)).toFixed(1)}%`);
  span.title = `p = ${(100 * Math.exp(entry.logprob)).toFixed(1)}%\n` + alts.join("\n");
  return span;
}

function handleChunk(chunk, view) {
  if (chunk.error) { showError(chunk.error); return; }
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) {
      view.reasoning.textContent += delta.reasoning_content;
      view.reasoning.hidden = false;
    }
    const entries = (choice.logprobs && choice.logprobs.content) || [];
    if (entries.length) {
      for (const entry of entries) view.body.appendChild(tokenSpan(entry));
    } else if (delta.content) {
      view.body.appendChild(document.createTextNode(delta.content));
    }
    if (delta.content) view.content += delta.content;
    if (delta.tool_calls) view.body.appendChild(document.createTextNode(JSON.stringify(delta.tool_calls)));
    if (choice.finish_reason) view.finish = choice.finish_reason;
  }
  if (chunk.usage) view.tokens = chunk.usage.completion_tokens;
}

async function send(text) {
  clearErrors();
  let body;
  state.messages.push({ role: "user", content: text });
  try { body = requestBody(); } catch (e) { state.messages.pop(); showError(e); return; }
  const user = bubble("user");
  user.textContent = text;
  const div = bubble("assistant");
  const view = { body: document.createElement("span"), reasoning: document.createElement("span"),
                 content: "", finish: null, tokens: 0, chunks: 0 };
  view.reasoning.className = "reasoning";
  view.reasoning.hidden = true;
  div.append(view.reasoning, view.body);
  $("finish").textContent = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  state.controller = new AbortController();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      state.messages.pop();
      user.remove();
      div.remove();
      showError(await errorOf(response));
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data && data !== "[DONE]") {
            handleChunk(JSON.parse(data), view);
            div.dataset.chunks = ++view.chunks; // streamed events so far
          }
        }
      }
    }
    state.messages.push({ role: "assistant", content: view.content });
    $("finish").textContent = `finish: ${view.finish || "?"}` +
      (view.tokens ? ` · ${view.tokens} tokens` : "");
    div.dataset.finish = view.finish || "";
  } catch (e) {
    if (e.name === "AbortError") {
      state.messages.push({ role: "assistant", content: view.content });
      $("finish").textContent = "finish: stopped";
      div.dataset.finish = "stopped";
    } else {
      showError({ message: String(e) });
    }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

let last = null; // previous /metrics reading, for tok/s

async function pollMetrics() {
  try {
    const response = await fetch("/metrics", { headers: headers() });
    if (!response.ok) return;
    const values = {}; // summed over the served models (each line carries a model label)
    for (const line of (await response.text()).split("\n")) {
      const m = line.match(/^(jaxserve_engine_\w+)(?:\{[^}]*\})?\s+(\S+)$/);
      if (m) values[m[1]] = (values[m[1]] || 0) + Number(m[2]);
    }
    const show = (id, v) => { $(id).textContent = v === undefined ? "-" : String(Math.round(v)); };
    show("m-running", values.jaxserve_engine_num_running);
    show("m-waiting", values.jaxserve_engine_num_waiting);
    show("m-pages", values.jaxserve_engine_kv_pages_used);
    const generated = values.jaxserve_engine_generated_tokens_total;
    const now = performance.now();
    if (last && generated !== undefined) {
      $("m-tps").textContent = ((generated - last.generated) / ((now - last.time) / 1000)).toFixed(1);
    }
    if (generated !== undefined) last = { generated, time: now };
  } catch {
    // the server may be restarting: try again at the next tick
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => {
  state.messages = [];
  $("messages").innerHTML = "";
  $("finish").textContent = "";
  clearErrors();
});
$("api-key").value = sessionStorage.getItem(KEY) || "";
$("api-key").addEventListener("change", () => {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  loadModels();
});
$("constraint-kind").addEventListener("change", () => $("constraint-error").hidden = true);
loadModels();
pollMetrics();
setInterval(pollMetrics, 2000);
