// The sign-in form: an API key of the service, checked with /v1/me before it is kept.
import { api, problem } from "../api.js";
import { $, mount } from "../dom.js";
import { clearProblems, showProblems } from "../forms.js";
import { leave } from "../lifecycle.js";
import { signedIn, takeReturnPath } from "../session.js";

export function showSignIn(message) {
  leave();
  if (location.hash !== "#/sign-in") history.replaceState(null, "", "#/sign-in");
  document.title = "Sign in · textft";
  const main = mount("#t-sign-in");
  const form = $("#sign-in-form", main);
  const input = $("#key", main);
  if (message) { $(".field-error", form).textContent = message; form.querySelector(".field").classList.add("invalid"); }
  input.focus();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearProblems(form);
    const key = input.value.trim();
    if (!key) { showProblems(form, problem("key", "Enter the API key.")); return; }
    let user;
    try {
      user = await api("/v1/me", { key });
    } catch (e) {
      showProblems(form, problem("key", e.status === 401 ? `Wrong key: ${e.message}` : e.message));
      return;
    }
    signedIn(key, user);
    location.hash = takeReturnPath();
  });
}
