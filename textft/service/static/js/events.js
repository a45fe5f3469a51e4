// A job's Server-Sent Events over fetch (EventSource cannot send the bearer header). A dropped
// connection is resumed with Last-Event-ID, so no event is missed; the server ends the stream once
// the job has finished and every event was sent.
import { ApiError, api, authHeaders } from "./api.js";
import { signOut } from "./session.js";

export const ACTIVE = ["queued", "running"];

// Splits complete "\n\n"-ended blocks off `buffer`: [events with an id, the rest of the buffer].
export function parseEvents(buffer) {
  const events = [];
  let cut;
  while ((cut = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, cut);
    buffer = buffer.slice(cut + 2);
    const event = { type: "message", data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("id:")) event.id = Number(line.slice(3).trim());
      else if (line.startsWith("event:")) event.type = line.slice(6).trim();
      else if (line.startsWith("data:")) event.data += line.slice(5).trim();
    }
    if (event.id !== undefined) events.push(event);
  }
  return [events, buffer];
}

// Reads one connection to its end; cursor.last: the id of the last event handled, kept even when a
// handler throws, so that the resumed stream starts after it.
async function readStream(resp, cursor, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let events;
    [events, buffer] = parseEvents(buffer + value.replace(/\r\n/g, "\n"));
    for (const event of events) {
      cursor.last = event.id;
      onEvent(event.type, JSON.parse(event.data));
    }
  }
}

export async function followEvents(jobId, onEvent, signal) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const cursor = { last: 0 };
  while (!signal.aborted) {
    try {
      const headers = authHeaders(cursor.last ? { "Last-Event-ID": String(cursor.last) } : {});
      const resp = await fetch(`${path}/events`, { headers, signal });
      if (resp.status === 401) { signOut("the API key is no longer valid"); return; }
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      await readStream(resp, cursor, onEvent);
      const job = await api(path, { signal });
      if (!ACTIVE.includes(job.state)) return;
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status === 404) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}
