// Demo page: POST the form to /v1/ocr/stream and render its server-sent events as they arrive.
// (EventSource only does GET, so the event stream is read from fetch()'s body.)
const $ = (id) => document.getElementById(id);
let controller = null;

fetch("/health").then((r) => r.json()).then((h) => {
  $("model").textContent = `Model: ${h.model} (${h.template} template, ${h.device}).`;
}).catch(() => {});

$("task").addEventListener("change", () => { $("question-row").hidden = $("task").value !== "ask"; });

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  const preview = $("preview");
  if (file && file.type.startsWith("image/")) preview.src = URL.createObjectURL(file);
  else preview.removeAttribute("src");
});

$("stop").addEventListener("click", () => controller && controller.abort());

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function parseEvent(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  return { event, data: data ? JSON.parse(data) : {} };
}

// Page results: streamed text while a page runs, replaced by the page's final (cleaned) text when done.
const pages = [];
function render() {
  const many = pages.length > 1;
  $("answer").textContent = pages.map((p) => (many ? `--- page ${p.page} ---\n` : "") + p.text).join("\n\n");
}

function handle({ event, data }) {
  if (event === "page") {
    pages.push({ page: data.page ?? 1, text: "" });
    setStatus(data.pages > 1 ? `running page ${pages.length} of ${data.pages}...` : "running...");
  } else if (event === "delta") {
    pages[pages.length - 1].text += data.text;
  } else if (event === "done") {
    const page = pages[pages.length - 1];
    page.text = data.chart ? JSON.stringify(data.chart, null, 2) : data.text;
    if (data.truncated_by_loop_guard) page.text += "\n[stopped: repetition loop]";
  } else if (event === "end") {
    setStatus(`done (${data.pages} page(s), ${data.seconds} s)`);
  } else if (event === "error") {
    setStatus(`error: ${data.error}`, true);
  }
  render();
}

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  pages.length = 0;
  render();
  const form = new FormData($("form"));
  if ($("task").value !== "ask") form.delete("question");
  if (!form.get("pages")) form.delete("pages");
  controller = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  setStatus("uploading...");
  try {
    const response = await fetch("/v1/ocr/stream", { method: "POST", body: form, signal: controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: response.statusText }));
      setStatus(`error ${response.status}: ${body.error}`, true);
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handle(parseEvent(buffer.slice(0, cut)));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (err) {
    setStatus(err.name === "AbortError" ? "stopped" : `error: ${err}`, err.name !== "AbortError");
  } finally {
    $("run").disabled = false;
    $("stop").disabled = true;
  }
});
