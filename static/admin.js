/* orpoll admin: shared helpers. Data goes into the page with textContent only, never as HTML. */
"use strict";

const orpoll = (() => {
  const token = document.querySelector('meta[name="xsrf-token"]')?.content || "";

  /** Call the admin JSON API; resolves to the parsed body, rejects with the error's message. */
  async function api(method, path, body) {
    const init = {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-XSRFToken": token },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      location.assign("/admin/login?next=" + encodeURIComponent(location.pathname));
      throw new Error("session ended");
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = new Error((data.error && data.error.message) || "HTTP " + resp.status);
      err.param = data.error && data.error.param;
      throw err;
    }
    return data;
  }

  /** el("td", {className: "num"}, "text", childNode): a DOM node; strings become text nodes. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let toastTimer = 0;
  function toast(message, kind) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.className = kind || "";
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + "s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function ago(seconds) {
    return seconds < 5 ? "just now" : duration(seconds) + " ago";
  }

  return { api, el, toast, duration, ago };
})();
