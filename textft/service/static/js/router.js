// The page's routes (#/jobs, #/jobs/ID, ...): each draws one of index.html's templates with its view.
// Before the first view, the signed-in user (/v1/me) and the service's tasks (/v1/tasks) are loaded.
import { api } from "./api.js";
import { $, el, mount, toast } from "./dom.js";
import { leave } from "./lifecycle.js";
import { apiKey, currentUser, setUser, signOut, whenSignedOut } from "./session.js";
import { loadTasks } from "./tasks.js";
import { viewDatasets } from "./views/datasets.js";
import { viewJob } from "./views/job.js";
import { viewJobs } from "./views/jobs.js";
import { viewModels } from "./views/models.js";
import { viewNewJob } from "./views/new-job.js";
import { showSignIn } from "./views/sign-in.js";
import { viewModel } from "./views/try.js";

const ROUTES = [
  [/^#\/datasets$/, "#t-datasets", viewDatasets],
  [/^#\/new$/, "#t-new-job", viewNewJob],
  [/^#\/jobs$/, "#t-jobs", viewJobs],
  [/^#\/jobs\/([\w-]+)$/, "#t-job", viewJob],
  [/^#\/models$/, "#t-models", viewModels],
  [/^#\/models\/([\w-]+)$/, "#t-model", viewModel],
];

// The header of a signed-in page: the navigation, the current section marked, and who is signed in.
function showHeader(path, me) {
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#who-name").textContent = `${me.name}${me.admin ? " (admin)" : ""}`;
  for (const a of document.querySelectorAll("#nav a")) {
    const href = a.getAttribute("href");
    const current = path === href || (href !== "#/new" && path.startsWith(`${href}/`));
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

function showFailure(main, e) {
  main.replaceChildren(el("h1", { text: "Something went wrong" }), el("p", { class: "error-box", role: "alert", text: e.message }),
    el("p", {}, el("a", { href: "#/jobs", text: "Back to the jobs" })));
}

// The signed-in user and the service's tasks, asked once, before the first view.
async function prepare() {
  if (!currentUser()) setUser(await api("/v1/me"));
  await loadTasks();
}

let navigation = 0;

export async function route() {
  const mine = ++navigation;
  leave();
  if (!apiKey()) { signOut(); return; }
  try { await prepare(); } catch (e) { if (e.status !== 401) toast(e.message, "error"); return; }
  if (mine !== navigation) return;  // the user moved on while it loaded: only the latest view is drawn
  const [path, query] = (location.hash || "#/jobs").split("?");
  const params = new URLSearchParams(query || "");
  showHeader(path, currentUser());
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) { location.replace("#/jobs"); return; }
  const [pattern, template, view] = found;
  const match = path.match(pattern);
  const main = mount(template);
  try {
    await view(main, match[1] !== undefined ? match[1] : params, params);
  } catch (e) {
    if (e.name === "AbortError" || e.status === 401) return;
    showFailure(main, e);
  }
}

// Signed out (by the user, or because the service no longer takes the key): back to the form.
whenSignedOut((message) => {
  $("#nav").hidden = true;
  $("#who").hidden = true;
  showSignIn(message);
});
