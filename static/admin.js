/* orpoll admin: shared helpers. Data goes into the page with textContent only, never as HTML.
   Every visible string comes from the page's catalogue (the #i18n block), in the page's language. */
"use strict";

const orpoll = (() => {
  const token = document.querySelector('meta[name="xsrf-token"]')?.content || "";
  const lang = document.documentElement.lang || "en";
  const strings = JSON.parse(document.getElementById("i18n")?.textContent || "{}");
  const plurals = new Intl.PluralRules(lang);
  const numbers = new Intl.NumberFormat(lang);

  /** The catalogue text of ``key`` with {name} placeholders filled from ``params``. */
  function t(key, params) {
    const text = key in strings ? strings[key] : key;
    if (!params) return text;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
  }

  /** ``key`` when the catalogue has it, else ``fallback`` (for names the server may add later). */
  function tOr(key, fallback, params) {
    return key in strings ? t(key, params) : fallback;
  }

  /** A count in words: ``key.one`` / ``key.other`` (the language's plural rules), {n} formatted. */
  function tn(key, n, params) {
    const form = key + "." + plurals.select(n);
    return t(form in strings ? form : key + ".other", { ...params, n: num(n) });
  }

  function num(n, options) {
    return options ? new Intl.NumberFormat(lang, options).format(n) : numbers.format(n);
  }

  const money = (v) => num(Number(v), { style: "currency", currency: "USD" });
  const clock = (seconds) => new Date(seconds * 1000).toLocaleTimeString(lang);

  /** An API error in the page's language: by its stable code, with the server's message as
      the detail; the server's message alone for a code the catalogue does not know. */
  function errorText(error, resp) {
    const code = error && typeof error.code === "string" ? error.code : "";
    const detail = (error && error.message) || t("error.http", { status: resp.status });
    return tOr("error." + code, detail, { detail, wait: resp.headers.get("Retry-After") || "" });
  }

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
      throw new Error(t("error.admin_session_required"));
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = new Error(errorText(data.error, resp));
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
    if (seconds < 60) return t("dur.s", { s: seconds });
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return t("dur.ms", { m, s: String(s).padStart(2, "0") });
    const h = Math.floor(m / 60);
    if (h < 48) return t("dur.hm", { h, m: String(m % 60).padStart(2, "0") });
    return t("dur.dh", { d: Math.floor(h / 24), h: h % 24 });
  }

  function ago(seconds) {
    return seconds < 5 ? t("time.just_now") : t("time.ago", { duration: duration(seconds) });
  }

  return { api, el, toast, duration, ago, t, tOr, tn, num, money, clock };
})();
