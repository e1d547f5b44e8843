// pubmind workbench: htmx error display and the streamed Ask form. Server-rendered HTML only: streamed
// text is inserted as text (never HTML); the final answer and cards come back sanitised from the server.
"use strict";
document.addEventListener("htmx:beforeSwap", (e) => {
  const xhr = e.detail.xhr;
  if (xhr.status >= 400 && !xhr.getResponseHeader("HX-Redirect")) {  // show errors instead of dropping them
    e.detail.shouldSwap = true;
    e.detail.isError = false;
    e.detail.target = document.getElementById("flash");
  }
});

function csrf() {
  const h = document.body.getAttribute("hx-headers");
  return h ? JSON.parse(h)["x-csrftoken"] : "";
}

async function streamAsk(form) {
  const out = document.getElementById("stream-answer");
  const result = document.getElementById("result");
  const evidence = document.getElementById("evidence");
  const busy = document.getElementById("ask-busy");
  const button = form.querySelector("button[type=submit]");
  document.getElementById("flash").innerHTML = "";
  result.querySelectorAll("article").forEach((n) => n.remove());
  evidence.innerHTML = "";
  out.textContent = "";
  out.hidden = false;
  busy.hidden = false;
  button.disabled = true;
  try {
    const resp = await fetch(form.action, {
      method: "POST", body: new URLSearchParams(new FormData(form)),
      headers: {"x-csrftoken": csrf(), "x-ui-fetch": "1"}, credentials: "same-origin",
    });
    if (!resp.ok) {  // a server-rendered, escaped error fragment
      document.getElementById("flash").innerHTML = await resp.text();
      out.hidden = true;
      return;
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const payload = JSON.parse(data);
        if (name === "delta") out.textContent += payload.text;
        else if (name === "cards") evidence.innerHTML = payload.html;
        else if (name === "answer") {
          out.hidden = true;
          out.insertAdjacentHTML("afterend", payload.html);
          const final = document.getElementById("evidence-final");
          if (final) { evidence.innerHTML = final.innerHTML; final.remove(); }
          htmx.process(result);
        } else if (name === "error") {
          document.getElementById("flash").textContent = "The answer stopped: " + payload.error.message;
        }
      }
    }
  } catch (err) {
    document.getElementById("flash").textContent = "The connection failed: " + err;
  } finally {
    busy.hidden = true;
    button.disabled = false;
  }
}

document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form.matches("form[data-stream]")) {
    e.preventDefault();
    streamAsk(form);
  }
});

// Citation markers: move keyboard focus to the evidence card they point at.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a.cite");
  if (!a) return;
  const card = document.getElementById("ev-" + a.dataset.pmid);
  if (card) { e.preventDefault(); card.scrollIntoView({block: "center"}); card.focus(); history.replaceState(null, "", "#ev-" + a.dataset.pmid); }
});

// Correction editor: "cite" inserts [PMID:n] at the cursor and ticks the PMID; the check re-runs on input.
document.addEventListener("click", (e) => {
  const b = e.target.closest("button.cite-insert");
  if (!b) return;
  const ta = document.getElementById("corrected_answer");
  const tag = "[PMID:" + b.dataset.pmid + "]";
  const at = ta.selectionStart ?? ta.value.length;
  ta.value = ta.value.slice(0, at) + tag + ta.value.slice(ta.selectionEnd ?? at);
  ta.focus();
  ta.setSelectionRange(at + tag.length, at + tag.length);
  ta.dispatchEvent(new Event("input", {bubbles: true}));
  const box = b.parentElement.querySelector("input[type=checkbox]");
  if (box) box.checked = true;
});
