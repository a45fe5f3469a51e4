// The textft service page: a client of the /v1 API, like curl. ES modules served as they are: no
// framework, no build step, nothing from another origin.
import { $, toast } from "./dom.js";
import { route } from "./router.js";
import { apiKey, signOut } from "./session.js";

window.addEventListener("hashchange", () => {
  if (location.hash === "#/sign-in" && apiKey()) { location.replace("#/jobs"); return; }
  if (location.hash !== "#/sign-in") route();
});

$("#sign-out").addEventListener("click", () => { signOut(); toast("Signed out: the key was forgotten by this tab"); });
route();
