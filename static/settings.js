/* Settings page: send changed settings as JSON; show per-field errors; password change. */
"use strict";

(() => {
  const { api, toast, t, tn } = orpoll;
  const form = document.getElementById("settings-form");
  const result = document.getElementById("settings-result");

  function clearErrors() {
    for (const p of form.querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
  }

  function showError(e) {
    const field = e.param && form.querySelector('.field[data-name="' + CSS.escape(e.param) + '"]');
    if (field) {
      const p = field.querySelector(".field-error");
      p.textContent = e.message;
      p.hidden = false;
    }
    result.textContent = e.message;
    result.className = "result error-text";
  }

  async function save(changes) {
    clearErrors();
    if (!Object.keys(changes).length) {
      result.textContent = t("settings.nothing_changed");
      result.className = "result muted";
      return;
    }
    try {
      const r = await api("POST", "/admin/settings", changes);
      toast(t("settings.saved", { names: r.changed.join(t("list.sep")) }), "ok");
      setTimeout(() => location.reload(), 600);
    } catch (e) { showError(e); }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const changes = {};
    for (const input of form.querySelectorAll("[data-initial]")) {
      if (input.value !== input.dataset.initial) changes[input.name] = input.value;
    }
    save(changes);
  });
  for (const button of form.querySelectorAll("[data-reset]")) {
    button.addEventListener("click", () => save({ [button.dataset.reset]: null }));
  }

  const pw = document.getElementById("password-form");
  if (pw) {
    pw.addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = document.getElementById("password-result");
      try {
        const r = await api("POST", "/admin/password", {
          current_password: document.getElementById("current-password").value,
          new_password: document.getElementById("new-password").value,
        });
        out.textContent = tn("password.changed", r.sessions_revoked);
        out.className = "result ok-text";
        pw.reset();
      } catch (e) {
        out.textContent = e.message;
        out.className = "result error-text";
      }
    });
  }
})();
