// Who is signed in: the API key (kept in this tab's sessionStorage until sign-out), the /v1/me answer,
// and what happens when the service stops taking the key (the router shows the sign-in form).

const KEY = "textft.key";
const AFTER = "textft.after";

let me = null;
let onExpired = () => {};

export const apiKey = () => sessionStorage.getItem(KEY);
export const currentUser = () => me;

export function signedIn(key, user) {
  sessionStorage.setItem(KEY, key);
  me = user;
}

export function setUser(user) {
  me = user;
}

// Forgets the key, remembers where the user was (to return there after signing in again), then
// calls the handler given to whenSignedOut.
export function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  const wanted = location.hash && !location.hash.startsWith("#/sign-in") ? location.hash : "#/jobs";
  sessionStorage.setItem(AFTER, wanted);
  onExpired(message);
}

export function whenSignedOut(handler) {
  onExpired = handler;
}

// Where to go once signed in: the page the user was sent away from, once.
export function takeReturnPath() {
  const after = sessionStorage.getItem(AFTER) || "#/jobs";
  sessionStorage.removeItem(AFTER);
  return after;
}
