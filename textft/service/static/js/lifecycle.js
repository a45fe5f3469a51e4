// What a view leaves running (timers, streams, listeners on window) is stopped when the page moves
// on: views register a stop function, the router runs them all before the next view.

let stops = [];

export function onLeave(stop) {
  stops.push(stop);
}

export function leave() {
  const pending = stops;
  stops = [];
  pending.forEach((stop) => stop());
}
