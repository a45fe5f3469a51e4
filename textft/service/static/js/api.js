// The /v1 API, as curl would use it: the bearer key of the session, JSON in and out, and errors as
// ApiError with the service's message and its list of problems ({field, message}).
import { download } from "./dom.js";
import { apiKey, signOut } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.problems = (body && body.problems) || [];
  }
}

// An error found before asking the service, shown like one of its problems next to `field`.
export const problem = (field, message) => new ApiError(0, { problems: [{ field, message }] });

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

// `key`: a key to try instead of the session's (signing in); a 401 then does not sign out.
export async function api(path, { method = "GET", json, form, signal, as = "json", key } = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: "the service cannot be reached; is it running?" });
  }
  if (!resp.ok) throw await failure(resp, !key);
  if (as === "text") return resp.text();
  if (as === "blob") return resp.blob();
  if (as === "response") return resp;
  return resp.status === 204 ? null : resp.json();
}

async function failure(resp, signOutOn401) {
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON: a proxy's page */ }
  const err = new ApiError(resp.status, data || { error: `${resp.status} ${resp.statusText}` });
  if (resp.status === 401 && signOutOn401) signOut(err.message);
  return err;
}

export async function saveBlob(path, filename) {
  download(await api(path, { as: "blob" }), filename);
}

// The datasets, and their names by id for the pages that show a job's or a model's data.
let datasetNames = {};

export async function loadDatasets() {
  const list = await api("/v1/datasets");
  datasetNames = Object.fromEntries(list.map((d) => [d.id, d.name]));
  return list;
}

export const datasetName = (id) => datasetNames[id] || id;
