// lhama's chat page: talks to the same server's OpenAI API. Streams with
// fetch + ReadableStream, shows time to first token and tokens per second;
// the stop button aborts the fetch, and the server cancels the request when
// the connection closes. Turns follow the model's roles: a system box only
// when the server merges system messages.
"use strict";

const $ = (id) => document.getElementById(id);
const turns = [];
let controller = null;
let config = { api_key_required: false, system_prompt: "reject" };

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api_key").value || sessionStorage.getItem("lhama-key") || "";
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function add(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (r.status === 401) {
    $("key-needed").hidden = false;
    $("settings").open = true;
    return;
  }
  $("key-needed").hidden = true;
  const body = await r.json();
  const select = $("model");
  select.textContent = "";
  for (const m of body.data || []) {
    const o = document.createElement("option");
    o.value = o.textContent = m.id;
    select.appendChild(o);
  }
}

async function init() {
  try {
    config = await (await fetch("/ui/config")).json();
  } catch (_) { /* defaults */ }
  $("key-row").hidden = !config.api_key_required;
  $("system").hidden = config.system_prompt !== "merge";
  const saved = sessionStorage.getItem("lhama-key");
  if (saved) $("api_key").value = saved;
  $("api_key").addEventListener("change", () => {
    sessionStorage.setItem("lhama-key", $("api_key").value);
    loadModels();
  });
  await loadModels();
}

function messages() {
  const out = [];
  const system = $("system").value.trim();
  if (!$("system").hidden && system) out.push({ role: "system", content: system });
  return out.concat(turns);
}

async function send(text) {
  turns.push({ role: "user", content: text });
  add("user", text);
  const li = add("assistant", "");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("stats").textContent = "…";
  const t0 = performance.now();
  let first = null, tokens = 0, usage = null, answer = "";
  const body = {
    model: $("model").value,
    messages: messages(),
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
  };
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || `HTTP ${r.status}`);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const data = JSON.parse(line.slice(6));
          if (data.error) throw new Error(data.error.message);
          if (data.usage) usage = data.usage;
          const delta = data.choices && data.choices[0] && data.choices[0].delta;
          if (delta && delta.content) {
            if (first === null) first = performance.now() - t0;
            answer += delta.content;
            li.textContent = answer;
            tokens += 1;
          }
        }
      }
    }
    turns.push({ role: "assistant", content: answer });
    if (usage) tokens = usage.completion_tokens;
    const secs = (performance.now() - t0 - (first || 0)) / 1000;
    $("stats").textContent = `TTFT ${first === null ? "–" : first.toFixed(0)} ms · ${tokens} tokens · ` +
      `${secs > 0 ? (tokens / secs).toFixed(1) : "–"} tok/s`;
  } catch (e) {
    if (e.name === "AbortError") {
      turns.push({ role: "assistant", content: answer });
      $("stats").textContent = `parado · TTFT ${first === null ? "–" : first.toFixed(0)} ms`;
    } else {
      li.className = "error";
      li.textContent = String(e.message || e);
      turns.pop();
      $("stats").textContent = "";
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  init();
});
