// The one SDK client of the page (static/socialhub.js): REST, the socket, the session.
// The session (tokens and the signed-in user) is kept by the SDK in localStorage, so a
// reload stays signed in; the access token is refreshed by the SDK before it expires.

import { Socialhub } from "/static/socialhub.js";

export const sh = new Socialhub();

/** The signed-in user (the SDK keeps it with the tokens), or null. */
export function me() {
  return sh.user;
}
