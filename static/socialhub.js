// socialhub.js: the JavaScript SDK of socialhub. One ES module, no build step, no
// dependencies. Works in browsers and in Node >= 20 (pass `WebSocket` in the options or
// run Node with --experimental-websocket for the global one).
//
//   import { Socialhub } from "/static/socialhub.js";
//   const sh = new Socialhub();                 // baseUrl: the page's origin
//   await sh.auth.login("alice", "correct horse 1");
//   await sh.connect();                         // one socket, `authenticate` first
//   sh.on("new_message", ({ message }) => ...); // each seq once, in order, across reconnects
//   await sh.chat.join(roomId);
//   await sh.chat.send(roomId, "hello");
//
// The rules it keeps (docs/sdk-js.md says more):
// - Reconnect: exponential backoff with full jitter (delay = random(0, min(max, initial * 2^n))),
//   started afresh after a socket that stayed open 10 s. Close 4401 (session ended)
//   refreshes the token once; if that fails the client is signed out ("signed_out" event)
//   and stays closed. A failed connection, a handshake that hangs, or a ping without pong
//   count as a close.
// - Resume: after a reconnect every joined room is joined again with `since_seq` = the
//   last seq delivered, and presence subscriptions are renewed. `new_message` events are
//   deduplicated by seq and delivered in seq order; a gap makes the SDK rejoin the room.
// - Tokens: the access token is refreshed shortly before it expires (and once on a 401);
//   each refresh rotates the refresh token, which is stored at once (storage is
//   pluggable; localStorage by default when there is one).
// - Requests on the socket carry a `ref`; the reply (`ack`, `joined`, `pong`, `error`)
//   settles the promise, or it is rejected with a RequestTimeoutError.
// - Frames leave paced below the server's frame limit (20 a second, bursts of 40).

/**
 * @typedef {{id: string, username: string, name: string, avatar_url: string|null}} UserSummary
 * @typedef {UserSummary & {bio: string, created_at: string, followers_count: number,
 *   following_count: number, posts_count: number, following?: boolean, followed_by?: boolean,
 *   email?: string}} User
 * @typedef {{id: string, url: string, content_type: string, size: number, width?: number,
 *   height?: number, preview_url?: string, blurhash?: string}} Media
 * @typedef {{id: string, author: UserSummary, content: string, media: Media[], created_at: string,
 *   likes_count: number, comments_count: number, liked: boolean}} Post
 * @typedef {{id: string, post_id: string, author: UserSummary, content: string, created_at: string}} Comment
 * @typedef {{id: string, type: string, actor: UserSummary, post_id?: string|null,
 *   comment_id?: string|null, room_id?: string|null, call_id?: string|null, created_at: string,
 *   read: boolean}} Notification
 * @typedef {{id: string, room_id: string, seq: number, sender: UserSummary, body: string,
 *   client_msg_id: string, created_at: string}} Message
 * @typedef {{id: string, kind: "direct"|"group", name: string|null, members: UserSummary[],
 *   created_at: string, last_message?: Message|null, unread_count?: number}} Room
 * @typedef {{id: string, room_id?: string|null, caller: UserSummary, callee: UserSummary,
 *   media: "audio"|"video", state: "ringing"|"active"|"ended", end_reason?: string|null,
 *   started_at: string, answered_at?: string|null, ended_at?: string|null}} Call
 * @typedef {{urls: string|string[], username?: string, credential?: string}} IceServer
 */
/**
 * A page of a list, newest first; `next` is passed back as `before` (comments: `after`).
 * @template T
 * @typedef {{items: T[], next: string|null}} Page
 */
/**
 * @typedef {{token: string, refresh_token: string}} Tokens
 * @typedef {{user: User, token: string, refresh_token: string}} AuthResult
 * @typedef {{limit?: number, before?: string|null}} PageQuery
 * @typedef {{loaded: number, total: number, fraction: number}} Progress
 * @typedef {"idle"|"connecting"|"authenticating"|"open"|"reconnecting"|"closed"} ConnectionState
 */
/**
 * Storage for the session (tokens and the signed-in user). Methods may return promises.
 * `shared`: the browser Storage it writes to, when other tabs see it (the default).
 * @typedef {{get(key: string): (string|null|Promise<string|null>),
 *   set(key: string, value: string): (void|Promise<void>),
 *   remove(key: string): (void|Promise<void>), shared?: Storage}} TokenStorage
 */
/**
 * Events, by name, and what the listener receives:
 * - "state": {state: ConnectionState, previous: ConnectionState, attempt?: number, delay?: number, code?: number}
 * - "authenticated": {type, user_id, session_id} (each time a socket is authenticated)
 * - "tokens": {token, refresh_token} | null (after login, refresh, logout)
 * - "signed_out": {reason: "logout"|"refresh_failed"|"session_ended"}
 * - "frame": every frame the server sends, as it came
 * - "new_message": {type, message} (deduplicated, in seq order per room)
 * - "joined": {type, room_id, last_seq}; "resumed": {room_id, since_seq, last_seq}
 * - "typing": {type, room_id, user_id, state}; "read": {type, room_id, user_id, seq}
 * - "presence": {type, user_id, status, last_seen}
 * - "notification": {type, notification}
 * - "call_incoming": {type, call, sdp}; "call_answered": {type, call_id, sdp}
 * - "call_candidate": {type, call_id, candidate}; "call_ended": {type, call_id, reason}
 * - "error": an `error` frame that answers no pending request ({type, code, message, fields?})
 * @typedef {"state"|"authenticated"|"tokens"|"signed_out"|"frame"|"new_message"|"joined"|
 *   "resumed"|"typing"|"read"|"presence"|"notification"|"call_incoming"|"call_answered"|
 *   "call_candidate"|"call_ended"|"error"} EventType
 */
/**
 * @typedef {Object} SocialhubOptions
 * @property {string} [baseUrl] where socialhub is, e.g. "http://127.0.0.1:8000"; default: the page's origin
 * @property {TokenStorage|null} [storage] default: localStorage when present, else memory
 * @property {string} [storageKey] default "socialhub.session"
 * @property {any} [WebSocket] a WebSocket constructor; default globalThis.WebSocket
 * @property {typeof fetch} [fetch] default globalThis.fetch
 * @property {any} [XMLHttpRequest] for upload progress; default globalThis.XMLHttpRequest (none in Node)
 * @property {number} [requestTimeout] ms a socket request waits for its reply (default 10000)
 * @property {number} [sendTimeout] ms a chat message may wait, across reconnects, for its ack (default 30000)
 * @property {number} [httpTimeout] ms a REST call (not an upload) may take (default 30000)
 * @property {number} [refreshLead] s before expiry to refresh the access token (default 60; at most a quarter of its lifetime)
 * @property {number} [reconnectInitialDelay] ms (default 500)
 * @property {number} [reconnectMaxDelay] ms (default 30000)
 * @property {number} [pingInterval] ms between application pings on an idle socket (default 25000; 0: none)
 * @property {number} [pongTimeout] ms to wait for `pong` before the socket is taken as dead (default 10000)
 * @property {number} [connectTimeout] ms from opening a socket to `authenticated` before it is given up (default 15000)
 * @property {number} [frameRate] frames a second the socket sends at most (default 20; the server allows 30)
 * @property {number} [frameBurst] frames sent at once before the rate applies (default 40; the server allows 60)
 * @property {() => number} [random] default Math.random (the jitter)
 */

// -- errors ---------------------------------------------------------------------------

/** The base of every error the SDK throws; `code` is a stable snake_case string. */
export class SocialhubError extends Error {
  /** @param {string} code @param {string} message @param {{status?: number, fields?: Record<string,string>|null, retryAfter?: number|null, cause?: unknown}} [extra] */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "SocialhubError";
    /** @type {string} */ this.code = code;
    /** HTTP status, 0 when none (socket, network). @type {number} */ this.status = extra.status ?? 0;
    /** field -> problem, for validation errors. @type {Record<string,string>|null} */ this.fields = extra.fields ?? null;
    /** seconds, from Retry-After (429, 503). @type {number|null} */ this.retryAfter = extra.retryAfter ?? null;
  }
}

/** The server answered with `{"error": {code, message, fields}}` (HTTP) or an `error` frame. */
export class ApiError extends SocialhubError {
  constructor(code, message, extra = {}) {
    super(code, message, extra);
    this.name = "ApiError";
  }
}

/** No reply within the timeout (code "timeout"). */
export class RequestTimeoutError extends SocialhubError {
  constructor(message = "no reply in time") {
    super("timeout", message);
    this.name = "RequestTimeoutError";
  }
}

/** The server could not be reached ("network") or the socket closed before the reply ("disconnected"). */
export class ConnectionError extends SocialhubError {
  constructor(code, message, extra = {}) {
    super(code, message, extra);
    this.name = "ConnectionError";
  }
}

/** No session: not signed in, or the session ended and could not be refreshed (code "unauthenticated"). */
export class SignedOutError extends SocialhubError {
  constructor(message = "not signed in") {
    super("unauthenticated", message, { status: 401 });
    this.name = "SignedOutError";
  }
}

// -- storage --------------------------------------------------------------------------

/** A TokenStorage in memory (the default where there is no localStorage). */
export class MemoryStorage {
  constructor() {
    /** @type {Map<string,string>} */ this.map = new Map();
  }
  get(key) {
    return this.map.has(key) ? /** @type {string} */ (this.map.get(key)) : null;
  }
  set(key, value) {
    this.map.set(key, value);
  }
  remove(key) {
    this.map.delete(key);
  }
}

function defaultStorage() {
  try {
    const ls = globalThis.localStorage;
    if (ls) {
      return {
        get: (k) => ls.getItem(k),
        set: (k, v) => ls.setItem(k, v),
        remove: (k) => ls.removeItem(k),
        shared: ls, // other tabs write it too: their changes come as `storage` events
      };
    }
  } catch {
    // localStorage can throw (disabled cookies, sandboxed frames): memory then
  }
  return new MemoryStorage();
}

// -- small helpers --------------------------------------------------------------------

/** The claims of a JWT (no check: the server checks; this only reads `exp` and `iat`). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "===".slice((part.length + 3) % 4);
    return JSON.parse(atob(padded));
  } catch {
    return null;
  }
}

/** A random id (crypto.randomUUID where there is one: only secure contexts have it). */
export function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const h = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function unrefTimer(t) {
  if (t && typeof t === "object" && typeof t.unref === "function") t.unref();
  return t;
}

function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; }, 0);
}

const ref = (s) => encodeURIComponent(String(s));

/** A File's own name, or `fallback` for a Blob (which has none). */
const fileName = (blob, fallback) => (typeof File !== "undefined" && blob instanceof File && blob.name) || fallback;

/** Read an HTTP error body into an ApiError (or a SocialhubError for non-JSON answers). */
function httpError(status, text, retryAfterHeader) {
  const retryAfter = retryAfterHeader ? Number(retryAfterHeader) || null : null;
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error.code === "string") {
      return new ApiError(body.error.code, body.error.message ?? body.error.code, {
        status,
        fields: body.error.fields ?? null,
        retryAfter,
      });
    }
  } catch {
    // not JSON: a proxy's page, say
  }
  return new ApiError(status >= 500 ? "internal" : "bad_request", `HTTP ${status}`, { status, retryAfter });
}

// -- paging ---------------------------------------------------------------------------

/**
 * Walks a list page by page (`next` passed back as the cursor), for endless scroll.
 * @template T
 */
export class Pager {
  /**
   * @param {(query: {limit?: number, before?: string, after?: string}) => Promise<Page<T>>} fetchPage
   * @param {{limit?: number, cursor?: "before"|"after", start?: string|null}} [options]
   */
  constructor(fetchPage, options = {}) {
    this.fetchPage = fetchPage;
    this.limit = options.limit;
    this.cursorName = options.cursor ?? "before";
    /** @type {string|null} */ this.cursor = options.start ?? null;
    /** true once the last page was read. */ this.done = false;
    /** @type {Promise<T[]>|null} */ this._inflight = null;
  }

  /** The next page's items ([] once done). Concurrent calls share one request. @returns {Promise<T[]>} */
  next() {
    if (this.done) return Promise.resolve([]);
    if (this._inflight) return this._inflight;
    const query = {};
    if (this.limit !== undefined) query.limit = this.limit;
    if (this.cursor !== null) query[this.cursorName] = this.cursor;
    this._inflight = this.fetchPage(query).then(
      (page) => {
        this._inflight = null;
        this.cursor = page.next;
        if (!page.next) this.done = true;
        return page.items;
      },
      (err) => {
        this._inflight = null;
        throw err;
      },
    );
    return this._inflight;
  }

  /** Start again from the newest. */
  reset() {
    this.cursor = null;
    this.done = false;
  }
}

// -- the client -----------------------------------------------------------------------

/** `error` codes that mean a room is not there for this user any more. */
const GONE = new Set(["forbidden", "not_found"]);

/** A socket open this long (ms) counts as stable: the next reconnect starts the backoff afresh. */
const STABLE_MS = 10_000;

export class Socialhub {
  /** @param {SocialhubOptions} [options] */
  constructor(options = {}) {
    const origin = globalThis.location && globalThis.location.origin;
    this.baseUrl = String(options.baseUrl ?? origin ?? "").replace(/\/+$/, "");
    /** @type {TokenStorage} */ this.storage = options.storage ?? defaultStorage();
    this.storageKey = options.storageKey ?? "socialhub.session";
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.fetchImpl = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.XHRImpl = options.XMLHttpRequest ?? globalThis.XMLHttpRequest;
    this.requestTimeout = options.requestTimeout ?? 10_000;
    this.sendTimeout = options.sendTimeout ?? 30_000;
    this.httpTimeout = options.httpTimeout ?? 30_000;
    this.refreshLead = options.refreshLead ?? 60;
    this.reconnectInitialDelay = options.reconnectInitialDelay ?? 500;
    this.reconnectMaxDelay = options.reconnectMaxDelay ?? 30_000;
    this.pingInterval = options.pingInterval ?? 25_000;
    this.pongTimeout = options.pongTimeout ?? 10_000;
    this.connectTimeout = options.connectTimeout ?? 15_000;
    this.frameRate = options.frameRate ?? 20;
    this.frameBurst = options.frameBurst ?? 40;
    this.random = options.random ?? Math.random;

    /** @type {Map<string, Set<Function>>} */ this._listeners = new Map();
    /** @type {ConnectionState} */ this._state = "idle";
    /** @type {Tokens|null} */ this._tokens = null;
    /** @type {User|null} */ this._user = null;
    /** @type {Promise<Tokens>|null} */ this._refreshing = null;
    this._refreshTimer = null;
    this._ws = null;
    this._wantOpen = false;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._connectTimer = null;
    this._refCounter = 0;
    /** frames waiting for the rate (JSON text) */ this._outbox = [];
    this._bucket = this.frameBurst;
    this._bucketAt = Date.now();
    this._flushTimer = null;
    this._opening = false;
    this._authRetried = false;
    /** pending socket requests by ref */ this._pending = new Map();
    /** waiters for connect() */ this._openWaiters = [];
    /** rooms joined through the SDK: room_id -> {lastSeq, buffer: Map<number,object>, live: boolean} */
    this._rooms = new Map();
    /** user ids whose presence is followed */ this._presence = new Set();
    /** @type {{user_id: string, session_id: string}|null} */ this.session = null;

    this.auth = new AuthApi(this);
    this.users = new UsersApi(this);
    this.posts = new PostsApi(this);
    this.feed = new FeedApi(this);
    this.notifications = new NotificationsApi(this);
    this.chat = new ChatApi(this);
    this.presence = new PresenceApi(this);
    this.calls = new CallsApi(this);

    this._openedAt = 0;
    this.ready = this._load();
    // A browser back online: try at once rather than at the end of the backoff.
    this._onOnline = () => {
      if (this._wantOpen && this._state === "reconnecting") this._reconnectNow();
    };
    // Another tab of the same origin rotated the tokens, signed in or signed out.
    this._onStorage = (event) => {
      const shared = this.storage.shared;
      if (!shared || event.storageArea !== shared || (event.key !== null && event.key !== this.storageKey)) return;
      this._adoptStored(event.key === null ? null : event.newValue);
    };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
      if (this.storage.shared) globalThis.addEventListener("storage", this._onStorage);
    }
  }

  /** The stored session changed under us (another tab): follow it. */
  async _adoptStored(raw) {
    await this.ready;
    let saved = null;
    try {
      saved = raw ? JSON.parse(raw) : null;
    } catch {
      saved = null;
    }
    if (!saved || typeof saved.token !== "string" || typeof saved.refresh_token !== "string") {
      if (this._tokens) await this._signOut("logout", false); // signed out in another tab: the session is over
      return;
    }
    if (this._tokens && saved.refresh_token === this._tokens.refresh_token) return;
    const mine = this._user && this._user.id;
    if (this._tokens && mine && saved.user && saved.user.id !== mine) {
      // Another tab signed in as someone else: this client's user is gone.
      await this._signOut("logout", false);
    }
    this._tokens = { token: saved.token, refresh_token: saved.refresh_token };
    this._user = saved.user ?? this._user;
    this._scheduleRefresh();
    this._emit("tokens", { ...this._tokens });
  }

  // -- state and events ---------------------------------------------------------------

  /** @returns {ConnectionState} */
  get state() {
    return this._state;
  }

  /** The signed-in user (from login/signup/me), or null. @returns {User|null} */
  get user() {
    return this._user;
  }

  /** The current access token, or null. */
  get token() {
    return this._tokens ? this._tokens.token : null;
  }

  /** Whether a session (tokens) is held. */
  get signedIn() {
    return this._tokens !== null;
  }

  /**
   * Listen to an event; returns the function that stops listening.
   * @param {EventType|string} type @param {(detail: any) => void} fn @returns {() => void}
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** Listen to the next event of `type` only. @returns {() => void} */
  once(type, fn) {
    const off = this.on(type, (detail) => {
      off();
      fn(detail);
    });
    return off;
  }

  /** Stop listening. */
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  /**
   * A promise of the next event of `type` for which `predicate` holds.
   * @param {EventType|string} type @param {(detail: any) => boolean} [predicate] @param {number} [timeout] ms
   * @returns {Promise<any>}
   */
  waitFor(type, predicate = (_detail) => true, timeout = this.requestTimeout) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new RequestTimeoutError(`no ${type} event in time`));
      }, timeout);
      const off = this.on(type, (detail) => {
        if (!predicate(detail)) return;
        clearTimeout(timer);
        off();
        resolve(detail);
      });
    });
  }

  _emit(type, detail) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  _setState(state, extra = {}) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, ...extra });
  }

  // -- session and tokens -------------------------------------------------------------

  async _load() {
    try {
      const raw = await this.storage.get(this.storageKey);
      if (!raw) return;
      const saved = JSON.parse(raw);
      if (saved && typeof saved.token === "string" && typeof saved.refresh_token === "string") {
        this._tokens = { token: saved.token, refresh_token: saved.refresh_token };
        this._user = saved.user ?? null;
        this._scheduleRefresh();
      }
    } catch {
      // unreadable: as if signed out
    }
  }

  async _save() {
    if (this._tokens) {
      await this.storage.set(this.storageKey, JSON.stringify({ ...this._tokens, user: this._user }));
    } else {
      await this.storage.remove(this.storageKey);
    }
  }

  /**
   * Use these tokens (e.g. from another source); stores them and schedules the refresh.
   * @param {Tokens|null} tokens @param {User|null} [user]
   */
  async setSession(tokens, user = this._user) {
    await this.ready;
    this._tokens = tokens ? { token: tokens.token, refresh_token: tokens.refresh_token } : null;
    this._user = tokens ? user : null;
    await this._save();
    this._scheduleRefresh();
    this._emit("tokens", this._tokens ? { ...this._tokens } : null);
  }

  /** Seconds left before the access token expires (Infinity when it has no exp, -Infinity when none). */
  tokenSecondsLeft() {
    if (!this._tokens) return -Infinity;
    const claims = tokenClaims(this._tokens.token);
    if (!claims || typeof claims.exp !== "number") return Infinity;
    return claims.exp - Date.now() / 1000;
  }

  /** How long before expiry the token is refreshed: refreshLead, at most a quarter of its lifetime. */
  _lead() {
    const claims = this._tokens ? tokenClaims(this._tokens.token) : null;
    if (claims && typeof claims.exp === "number" && typeof claims.iat === "number") {
      return Math.min(this.refreshLead, (claims.exp - claims.iat) / 4);
    }
    return this.refreshLead;
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._tokens) return;
    const left = this.tokenSecondsLeft();
    if (!Number.isFinite(left)) return;
    const wait = Math.max(0, (left - this._lead()) * 1000);
    this._refreshTimer = unrefTimer(
      setTimeout(() => {
        this.refresh().catch(() => {
          // refresh() signs out on a refused token; on a network error try again soon
          if (this._tokens) {
            clearTimeout(this._refreshTimer);
            this._refreshTimer = unrefTimer(setTimeout(() => this._scheduleRefresh(), 5_000));
          }
        });
      }, Math.min(wait, 2 ** 31 - 1)),
    );
  }

  /**
   * Trade the refresh token for a new pair now (rotation: the new refresh token is
   * stored before this resolves). Concurrent calls share one request. A refused refresh
   * token signs the client out ("signed_out" event) and rejects with SignedOutError.
   * @returns {Promise<Tokens>}
   */
  refresh() {
    if (this._refreshing) return this._refreshing;
    this._refreshing = this._doRefresh().finally(() => {
      this._refreshing = null;
    });
    return this._refreshing;
  }

  async _readStored() {
    try {
      const raw = await this.storage.get(this.storageKey);
      const saved = raw ? JSON.parse(raw) : null;
      return saved && typeof saved.token === "string" && typeof saved.refresh_token === "string" ? saved : null;
    } catch {
      return null;
    }
  }

  async _doRefresh() {
    await this.ready;
    if (!this._tokens) throw new SignedOutError();
    // Another client on the same storage (a tab) may have rotated the pair already; the
    // storage always holds the newest pair. Spending our old refresh token would end the
    // session (a reused refresh token revokes it), so take theirs.
    const stored = await this._readStored();
    if (stored && stored.refresh_token !== this._tokens.refresh_token) {
      this._tokens = { token: stored.token, refresh_token: stored.refresh_token };
      this._user = stored.user ?? this._user;
      this._scheduleRefresh();
      this._emit("tokens", { ...this._tokens });
      if (this.tokenSecondsLeft() > this._lead()) return { ...this._tokens };
    }
    let used = this._tokens.refresh_token;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const pair = await this.api("POST", "/auth/refresh", { json: { refresh_token: used }, auth: false });
        this._tokens = { token: pair.token, refresh_token: pair.refresh_token };
        await this._save();
        this._scheduleRefresh();
        this._emit("tokens", { ...this._tokens });
        return { ...this._tokens };
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 401) throw err;
        // Another tab sharing the storage may have rotated it meanwhile: take theirs.
        const saved = await this._readStored();
        if (attempt === 0 && saved && saved.refresh_token !== used) {
          used = saved.refresh_token;
          continue;
        }
        await this._signOut("refresh_failed");
        throw new SignedOutError("the session ended; sign in again");
      }
    }
    throw new SignedOutError();
  }

  /** An access token good for a while longer (refreshing first when it is about to expire). */
  async _freshToken() {
    await this.ready;
    if (!this._tokens) throw new SignedOutError();
    if (this.tokenSecondsLeft() < Math.min(5, this._lead())) await this.refresh();
    if (!this._tokens) throw new SignedOutError();
    return this._tokens.token;
  }

  async _signOut(reason, clearStorage = true) {
    const had = this._tokens !== null;
    this._tokens = null;
    this._user = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (clearStorage) await this._save();
    this._closeSocket(1000, "signed out", true);
    this._wantOpen = false;
    this._rooms.clear();
    this._presence.clear();
    this._setState("closed");
    this._failOpenWaiters(new SignedOutError());
    if (had) {
      this._emit("tokens", null);
      this._emit("signed_out", { reason });
    }
  }

  // -- REST -----------------------------------------------------------------------------

  /**
   * One REST call. JSON in (`json`) or multipart (`form`: a FormData), JSON out (null for
   * 204). With `onProgress` and an XMLHttpRequest available the upload reports progress.
   * A 401 refreshes the token once and retries. Errors: ApiError (the server's error
   * body), ConnectionError "network", RequestTimeoutError, SignedOutError.
   * @param {string} method @param {string} path
   * @param {{query?: Record<string, any>, json?: any, form?: FormData, auth?: boolean,
   *   headers?: Record<string,string>, onProgress?: (p: Progress) => void, signal?: AbortSignal,
   *   timeout?: number}} [options]
   * @returns {Promise<any>}
   */
  async api(method, path, options = {}) {
    const auth = options.auth ?? true;
    let url = this.baseUrl + path;
    if (options.query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(options.query)) {
        if (v !== undefined && v !== null) qs.set(k, String(v));
      }
      const s = qs.toString();
      if (s) url += (url.includes("?") ? "&" : "?") + s;
    }
    for (let attempt = 0; ; attempt++) {
      /** @type {Record<string, string>} */
      const headers = { Accept: "application/json", ...(options.headers ?? {}) };
      let body;
      if (options.json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(options.json);
      } else if (options.form !== undefined) {
        body = options.form;
      }
      if (auth) headers.Authorization = `Bearer ${await this._freshToken()}`;
      const res = await this._send(method, url, headers, body, options);
      if (res.status === 401 && auth && attempt === 0 && this._tokens) {
        await this.refresh();
        continue;
      }
      if (res.status < 200 || res.status >= 300) {
        throw httpError(res.status, res.text, res.retryAfter);
      }
      if (res.status === 204 || !res.text) return null;
      try {
        return JSON.parse(res.text);
      } catch {
        return res.text;
      }
    }
  }

  /** @returns {Promise<{status: number, text: string, retryAfter: string|null}>} */
  _send(method, url, headers, body, options) {
    if (options.onProgress && this.XHRImpl) return this._sendXhr(method, url, headers, body, options);
    return this._sendFetch(method, url, headers, body, options);
  }

  async _sendFetch(method, url, headers, body, options) {
    if (!this.fetchImpl) throw new ConnectionError("network", "no fetch implementation");
    const controller = new AbortController();
    const timeout = options.timeout ?? (options.form ? 0 : this.httpTimeout);
    let timedOut = false;
    const timer = timeout ? setTimeout(() => { timedOut = true; controller.abort(); }, timeout) : null;
    const outer = options.signal;
    const onAbort = () => controller.abort();
    if (outer) {
      if (outer.aborted) controller.abort();
      else outer.addEventListener("abort", onAbort, { once: true });
    }
    let total = 0;
    if (options.onProgress && body instanceof FormData) {
      for (const v of body.values()) total += typeof v === "string" ? v.length : v.size;
    }
    try {
      const res = await this.fetchImpl(url, { method, headers, body, signal: controller.signal });
      const text = await res.text();
      if (options.onProgress) options.onProgress({ loaded: total, total, fraction: 1 });
      return { status: res.status, text, retryAfter: res.headers.get("Retry-After") };
    } catch (err) {
      if (timedOut) throw new RequestTimeoutError(`${method} ${url}: no answer in ${timeout} ms`);
      if (outer && outer.aborted) throw new ConnectionError("aborted", "the request was cancelled", { cause: err });
      throw new ConnectionError("network", `${method} ${url}: ${err && err.message ? err.message : err}`, { cause: err });
    } finally {
      clearTimeout(timer);
      if (outer) outer.removeEventListener("abort", onAbort);
    }
  }

  _sendXhr(method, url, headers, body, options) {
    return new Promise((resolve, reject) => {
      const xhr = new this.XHRImpl();
      xhr.open(method, url);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      if (options.timeout) xhr.timeout = options.timeout;
      xhr.upload.onprogress = (e) => {
        const total = e.lengthComputable ? e.total : 0;
        options.onProgress({ loaded: e.loaded, total, fraction: total ? e.loaded / total : 0 });
      };
      xhr.onload = () =>
        resolve({ status: xhr.status, text: xhr.responseText, retryAfter: xhr.getResponseHeader("Retry-After") });
      xhr.onerror = () => reject(new ConnectionError("network", `${method} ${url}: network error`));
      xhr.ontimeout = () => reject(new RequestTimeoutError(`${method} ${url}: no answer in time`));
      xhr.onabort = () => reject(new ConnectionError("aborted", "the request was cancelled"));
      if (options.signal) {
        if (options.signal.aborted) return xhr.abort();
        options.signal.addEventListener("abort", () => xhr.abort(), { once: true });
      }
      xhr.send(body ?? null);
    });
  }

  // -- the socket -----------------------------------------------------------------------

  /**
   * Open the socket (if it is not) and resolve once it is authenticated. From then on
   * it stays open: dropped sockets reconnect by themselves until disconnect() or sign-out.
   * @returns {Promise<{user_id: string, session_id: string}>}
   */
  connect() {
    this._wantOpen = true;
    if (this._state === "open" && this.session) return Promise.resolve({ ...this.session });
    const p = new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject }));
    if (this._state === "idle" || this._state === "closed") this._open();
    else if (this._state === "reconnecting") this._reconnectNow();
    return p;
  }

  /** Close the socket and stop reconnecting (the session and joined rooms are kept for the next connect()). */
  disconnect() {
    this._wantOpen = false;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._closeSocket(1000, "client closed", true);
    this._setState("closed");
    this._failOpenWaiters(new ConnectionError("disconnected", "disconnected"));
  }

  /** disconnect(), and stop the token refresh timer: the client is done. */
  close() {
    this.disconnect();
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
      globalThis.removeEventListener("storage", this._onStorage);
    }
  }

  /**
   * Send a frame and wait for its direct reply (`ack`, `joined`, `pong`), paired by `ref`.
   * Rejects with ApiError (an `error` frame), RequestTimeoutError, or ConnectionError
   * "disconnected" (the socket closed first). With `retry`, the frame is sent again on
   * each new socket until the timeout (only for idempotent frames).
   * @param {object} frame @param {{timeout?: number, retry?: boolean}} [options] @returns {Promise<any>}
   */
  rpc(frame, options = {}) {
    const r = `r${++this._refCounter}`;
    const full = { ...frame, ref: r };
    const timeout = options.timeout ?? this.requestTimeout;
    return new Promise((resolve, reject) => {
      const entry = { frame: full, resolve, reject, retry: !!options.retry, timer: null };
      entry.timer = setTimeout(() => {
        this._pending.delete(r);
        reject(new RequestTimeoutError(`no reply to ${frame.type} in ${timeout} ms`));
      }, timeout);
      this._pending.set(r, entry);
      if (this._state === "open") this._rawSend(full);
      else if (!entry.retry) {
        clearTimeout(entry.timer);
        this._pending.delete(r);
        reject(new ConnectionError("disconnected", `the socket is not open (${this._state})`));
      }
      // retry: sent when the socket is next authenticated
    });
  }

  /** Send a frame with no reply expected. Returns false when the socket is not open. */
  send(frame) {
    if (this._state !== "open") return false;
    return this._rawSend(frame);
  }

  /**
   * Queue a frame for the open socket. Frames leave at most `frameRate` a second (bursts
   * of `frameBurst`), below the server's limit (30 a second, bursts of 60: over it a frame
   * is refused `rate_limited`), so a resume of many rooms is paced rather than refused.
   */
  _rawSend(frame) {
    if (!this._ws) return false;
    this._outbox.push(JSON.stringify(frame));
    this._flush();
    return true;
  }

  _flush() {
    const now = Date.now();
    this._bucket = Math.min(this.frameBurst, this._bucket + ((now - this._bucketAt) * this.frameRate) / 1000);
    this._bucketAt = now;
    while (this._outbox.length && this._bucket >= 1 && this._ws) {
      try {
        this._ws.send(this._outbox.shift());
      } catch {
        // closing: the close handler decides what is sent again
      }
      this._bucket -= 1;
    }
    if (this._outbox.length && !this._flushTimer) {
      const wait = Math.ceil(((1 - this._bucket) * 1000) / this.frameRate);
      this._flushTimer = setTimeout(() => {
        this._flushTimer = null;
        this._flush();
      }, wait);
    }
  }

  _wsUrl() {
    const base = this.baseUrl || "";
    return base.replace(/^http/, "ws") + "/ws";
  }

  async _open() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (this._ws || this._opening) return;
    this._setState("connecting");
    let token;
    this._opening = true;
    try {
      token = await this._freshToken();
    } catch (err) {
      if (err instanceof SignedOutError) {
        this._wantOpen = false;
        this._setState("closed");
        this._failOpenWaiters(err);
        return;
      }
      this._scheduleReconnect(0);
      return;
    } finally {
      this._opening = false;
    }
    if (this._ws) return;
    if (!this._wantOpen) {
      this._setState("closed");
      return;
    }
    if (!this.WebSocketImpl) {
      this._failOpenWaiters(new ConnectionError("network", "no WebSocket implementation"));
      this._setState("closed");
      return;
    }
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl());
    } catch (err) {
      this._scheduleReconnect(0);
      return;
    }
    this._ws = ws;
    this.session = null;
    ws.binaryType = "arraybuffer"; // binary frames decoded at once, so frames stay in order
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._setState("authenticating");
      this._bucket -= 1;
      ws.send(JSON.stringify({ type: "authenticate", token }));
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this._onData(event.data);
    };
    ws.onerror = () => {
      // Browsers follow an error with a close event; Node's WebSocket does not when the
      // connection fails, so an error counts as the close (1006: no close frame).
      if (this._ws === ws) this._onClosed(1006, "error");
    };
    // A handshake that hangs (a server going down accepts and never answers) is given up.
    const timer = unrefTimer(
      setTimeout(() => {
        if (this._ws === ws && this._state !== "open") this._onClosed(1006, "connect timeout");
      }, this.connectTimeout),
    );
    this._connectTimer = timer;
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._onClosed(event.code, event.reason);
    };
  }

  _onData(data) {
    const text = typeof data === "string" ? data : new TextDecoder().decode(data);
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    this._emit("frame", frame);
    this._onFrame(frame);
  }

  _onFrame(frame) {
    const type = frame.type;
    if (type === "authenticated") {
      this.session = { user_id: frame.user_id, session_id: frame.session_id };
      clearTimeout(this._connectTimer);
      this._openedAt = Date.now();
      this._authRetried = false;
      this._setState("open");
      this._startPing();
      this._emit("authenticated", frame);
      const waiters = this._openWaiters.splice(0);
      for (const w of waiters) w.resolve({ ...this.session });
      this._resume();
      return;
    }
    if (frame.ref !== undefined && frame.ref !== null && this._pending.has(frame.ref)) {
      const entry = this._pending.get(frame.ref);
      this._pending.delete(frame.ref);
      clearTimeout(entry.timer);
      if (type === "error") {
        entry.reject(new ApiError(frame.code, frame.message, { fields: frame.fields ?? null }));
      } else {
        entry.resolve(frame);
      }
      if (type === "joined") this._onJoined(frame);
      if (type === "error" || type === "ack" || type === "pong") return;
      this._emit(type, frame);
      return;
    }
    switch (type) {
      case "new_message":
        this._onMessage(frame);
        return;
      case "joined":
        this._onJoined(frame);
        this._emit("joined", frame);
        return;
      case "ack":
      case "pong":
        return;
      default:
        this._emit(type, frame);
    }
  }

  _onJoined(frame) {
    const room = this._rooms.get(frame.room_id);
    if (!room) return;
    if (room.lastSeq === null) room.lastSeq = frame.last_seq;
    room.live = true;
  }

  _onMessage(frame) {
    const m = frame.message;
    const room = m ? this._rooms.get(m.room_id) : undefined;
    if (!room || room.lastSeq === null) {
      this._emit("new_message", frame);
      return;
    }
    if (m.seq <= room.lastSeq) return; // seen: a replay overlapping the live stream
    if (m.seq > room.lastSeq + 1) {
      // A gap on one socket: the server promises none, so something was lost. Keep it and
      // ask again from the last seq delivered; the replay fills the gap, dedupe does the rest.
      room.buffer.set(m.seq, frame);
      if (!room.resyncing) this._resync(m.room_id, room);
      return;
    }
    this._deliver(room, frame);
    while (room.buffer.has(room.lastSeq + 1)) {
      const next = room.buffer.get(room.lastSeq + 1);
      room.buffer.delete(room.lastSeq + 1);
      this._deliver(room, next);
    }
    for (const seq of room.buffer.keys()) if (seq <= room.lastSeq) room.buffer.delete(seq);
  }

  _deliver(room, frame) {
    room.lastSeq = frame.message.seq;
    this._emit("new_message", frame);
  }

  /**
   * Join a room again from the last seq delivered (after a gap, or a refused resume):
   * leave, then join with `since_seq`; the replay fills in, dedupe drops the rest. A room
   * the user may no longer see is dropped; a refusal for now is tried again later.
   */
  async _resync(roomId, room, attempt = 0) {
    if (room.resyncing) return;
    room.resyncing = true;
    try {
      await this.rpc({ type: "leave_room", room_id: roomId });
      const frame = { type: "join_room", room_id: roomId };
      if (room.lastSeq !== null) frame.since_seq = room.lastSeq;
      await this.rpc(frame, { timeout: this.sendTimeout });
    } catch (err) {
      if (err instanceof ApiError && GONE.has(err.code)) {
        this._rooms.delete(roomId);
      } else if (!(err instanceof ConnectionError)) {
        // rate_limited, unavailable, no reply: later (a closed socket resumes it anyway)
        const delay = Math.min(this.reconnectMaxDelay, 1000 * 2 ** attempt);
        unrefTimer(
          setTimeout(() => {
            if (this._state === "open" && this._rooms.get(roomId) === room) this._resync(roomId, room, attempt + 1);
          }, delay),
        );
      }
    } finally {
      room.resyncing = false;
    }
  }

  /** After a socket is authenticated: rooms, presence and queued requests again. */
  _resume() {
    for (const [roomId, room] of this._rooms) {
      room.live = false;
      const frame = { type: "join_room", room_id: roomId };
      if (room.lastSeq !== null) frame.since_seq = room.lastSeq;
      const since = room.lastSeq;
      this.rpc(frame, { timeout: this.sendTimeout }).then(
        (joined) => {
          if (since !== null) this._emit("resumed", { room_id: roomId, since_seq: since, last_seq: joined.last_seq });
        },
        (err) => {
          if (err instanceof ApiError && GONE.has(err.code)) {
            this._rooms.delete(roomId); // no longer a member, or no such room: stop following it
          } else if (this._state === "open" && this._rooms.get(roomId) === room) {
            this._resync(roomId, room); // refused for now (rate_limited, unavailable) or no reply: again
          }
        },
      );
    }
    const ids = [...this._presence];
    for (let i = 0; i < ids.length; i += 2000) {
      this.rpc({ type: "subscribe_presence", user_ids: ids.slice(i, i + 2000) }).catch(() => {});
    }
    for (const entry of this._pending.values()) {
      if (entry.retry) this._rawSend(entry.frame);
    }
  }

  _startPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    if (!this.pingInterval) return;
    const ws = this._ws;
    this._pingTimer = unrefTimer(
      setInterval(() => {
        if (this._ws !== ws || this._state !== "open") return;
        this.rpc({ type: "ping" }, { timeout: this.pongTimeout }).catch((err) => {
          if (err instanceof RequestTimeoutError && this._ws === ws) {
            // A dead link (no close frame ever comes): drop it and reconnect.
            this._onClosed(4000, "no pong");
          }
        });
      }, this.pingInterval),
    );
  }

  _closeSocket(code, reason, failPending) {
    const ws = this._ws;
    this._ws = null;
    this._outbox.length = 0; // frames for a gone socket: retried ones are sent again on the next
    clearTimeout(this._flushTimer);
    this._flushTimer = null;
    clearTimeout(this._connectTimer);
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    if (failPending) this._failPending(false);
  }

  _failPending(keepRetries) {
    for (const [r, entry] of this._pending) {
      if (keepRetries && entry.retry) continue;
      clearTimeout(entry.timer);
      this._pending.delete(r);
      entry.reject(new ConnectionError("disconnected", `the socket closed before the reply to ${entry.frame.type}`));
    }
  }

  _failOpenWaiters(err) {
    for (const w of this._openWaiters.splice(0)) w.reject(err);
  }

  async _onClosed(code, reason) {
    this._closeSocket(code === 4000 ? 4000 : 1000, reason, false);
    this.session = null;
    // The backoff starts again only after a socket that lived a while, so a server that
    // accepts and drops at once is not hammered.
    if (this._openedAt && Date.now() - this._openedAt > STABLE_MS) this._attempt = 0;
    this._openedAt = 0;
    for (const room of this._rooms.values()) room.live = false;
    this._failPending(true);
    if (!this._wantOpen) {
      this._setState("closed", { code });
      return;
    }
    if (code === 4401) {
      // The session ended or the token was refused: one refresh, then sign-out.
      if (this._authRetried) {
        await this._signOut("session_ended");
        return;
      }
      this._authRetried = true;
      this._setState("reconnecting", { attempt: this._attempt, delay: 0, code });
      try {
        await this.refresh();
      } catch (err) {
        if (!this._tokens) return; // refresh() signed out
      }
      this._scheduleReconnect(code, 0);
      return;
    }
    this._scheduleReconnect(code);
  }

  _scheduleReconnect(code, fixedDelay) {
    if (!this._wantOpen) return;
    const cap = Math.min(this.reconnectMaxDelay, this.reconnectInitialDelay * 2 ** this._attempt);
    const delay = fixedDelay ?? Math.floor(this.random() * cap);
    this._attempt++;
    this._setState("reconnecting", { attempt: this._attempt, delay, code });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._open();
    }, delay);
  }

  _reconnectNow() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._open();
  }

  /** The rooms this client follows, with the last seq delivered of each. @returns {Map<string, number|null>} */
  joinedRooms() {
    return new Map([...this._rooms].map(([id, r]) => [id, r.lastSeq]));
  }

  /**
   * A Pager over any list route, e.g. `sh.pager((q) => sh.feed.page(q))`.
   * @template T @param {(q: PageQuery) => Promise<Page<T>>} fetchPage @param {{limit?: number, cursor?: "before"|"after"}} [options]
   * @returns {Pager<T>}
   */
  pager(fetchPage, options) {
    return new Pager(fetchPage, options);
  }
}

// -- the REST areas -------------------------------------------------------------------

class AuthApi {
  constructor(client) {
    this.client = client;
  }

  /** @param {{name: string, email: string, username: string, password: string}} body @returns {Promise<AuthResult>} */
  async signup(body) {
    const r = await this.client.api("POST", "/auth/signup", { json: body, auth: false });
    await this.client.setSession(r, r.user);
    return r;
  }

  /** @param {string} identifier email or username @param {string} password @returns {Promise<AuthResult>} */
  async login(identifier, password) {
    const r = await this.client.api("POST", "/auth/login", { json: { identifier, password }, auth: false });
    await this.client.setSession(r, r.user);
    return r;
  }

  /** End the session on the server (all its tokens, at once) and here; closes the socket. */
  async logout() {
    const c = this.client;
    await c.ready;
    // The socket first, so that its close (4401 once the session ends) is not taken for
    // an ended session to recover from; then the stored session, so that other tabs sign
    // out at once rather than find their sockets closed and try a refresh.
    c._wantOpen = false;
    c._closeSocket(1000, "logout", true);
    if (c._tokens) await c.storage.remove(c.storageKey);
    try {
      if (this.client.signedIn) await this.client.api("POST", "/auth/logout");
    } catch (err) {
      if (!(err instanceof SocialhubError && (err.status === 401 || err instanceof SignedOutError))) throw err;
    } finally {
      await this.client._signOut("logout");
    }
  }

  /** Rotate the tokens now. @returns {Promise<Tokens>} */
  refresh() {
    return this.client.refresh();
  }

  /** Mail a reset code (202 whether or not the address is known). */
  async forgotPassword(email) {
    await this.client.api("POST", "/auth/forgot-password", { json: { email }, auth: false });
  }

  /** Set a new password with the mailed code; every session of the user ends (sign in again). */
  async resetPassword({ email, otp, new_password }) {
    return this.client.api("POST", "/auth/reset-password", { json: { email, otp, new_password }, auth: false });
  }

  /** The signed-in user, with email. @returns {Promise<User>} */
  async me() {
    const user = await this.client.api("GET", "/auth/me");
    if (this.client._tokens) {
      this.client._user = user;
      await this.client._save();
    }
    return user;
  }
}

class UsersApi {
  constructor(client) {
    this.client = client;
  }

  /** The signed-in user (= auth.me()). @returns {Promise<User>} */
  me() {
    return this.client.auth.me();
  }

  /** A profile by id, "@username" or "me". @returns {Promise<User>} */
  get(idOrName) {
    return this.client.api("GET", `/users/${ref(idOrName)}`);
  }

  /**
   * Edit the profile: name, bio, and an avatar image (Blob/File), with upload progress.
   * @param {{name?: string, bio?: string, avatar?: Blob, onProgress?: (p: Progress) => void}} changes
   * @returns {Promise<User>}
   */
  async updateProfile({ name, bio, avatar, onProgress } = {}) {
    let user;
    if (avatar) {
      const form = new FormData();
      if (name !== undefined) form.set("name", name);
      if (bio !== undefined) form.set("bio", bio);
      form.set("avatar", avatar, fileName(avatar, "avatar"));
      user = await this.client.api("PATCH", "/users/me", { form, onProgress });
    } else {
      const json = {};
      if (name !== undefined) json.name = name;
      if (bio !== undefined) json.bio = bio;
      user = await this.client.api("PATCH", "/users/me", { json });
    }
    if (this.client._tokens) {
      this.client._user = { ...(this.client._user ?? {}), ...user };
      await this.client._save();
    }
    return user;
  }

  /** @returns {Promise<{following: boolean}>} */
  follow(idOrName) {
    return this.client.api("POST", `/users/follow/${ref(idOrName)}`);
  }

  /** @returns {Promise<{following: boolean}>} */
  unfollow(idOrName) {
    return this.client.api("DELETE", `/users/follow/${ref(idOrName)}`);
  }

  /** @param {string} idOrName @param {PageQuery} [query] @returns {Promise<Page<User>>} */
  followers(idOrName, query = {}) {
    return this.client.api("GET", `/users/${ref(idOrName)}/followers`, { query });
  }

  /** @param {string} idOrName @param {PageQuery} [query] @returns {Promise<Page<User>>} */
  following(idOrName, query = {}) {
    return this.client.api("GET", `/users/${ref(idOrName)}/following`, { query });
  }

  /** @returns {Promise<{user_id: string, status: "online"|"offline", last_seen: string|null}>} */
  presence(idOrName) {
    return this.client.api("GET", `/users/${ref(idOrName)}/presence`);
  }
}

class PostsApi {
  constructor(client) {
    this.client = client;
  }

  /**
   * Publish a post, with up to 10 files (images, video, audio; 10 MB each) and upload
   * progress. `idempotencyKey` (default: a fresh one) makes a retry return the same post.
   * @param {{content?: string, files?: Blob[], onProgress?: (p: Progress) => void,
   *   idempotencyKey?: string, signal?: AbortSignal}} post
   * @returns {Promise<Post>}
   */
  create({ content = "", files = [], onProgress, idempotencyKey, signal } = {}) {
    const headers = { "Idempotency-Key": idempotencyKey ?? randomId() };
    if (!files.length) return this.client.api("POST", "/posts/", { json: { content }, headers, signal });
    const form = new FormData();
    form.set("content", content);
    for (const f of files) form.append("media", f, fileName(f, "file"));
    return this.client.api("POST", "/posts/", { form, headers, onProgress, signal });
  }

  /** @returns {Promise<Post>} */
  get(postId) {
    return this.client.api("GET", `/posts/${ref(postId)}`);
  }

  /** @returns {Promise<Post>} */
  edit(postId, content) {
    return this.client.api("PATCH", `/posts/${ref(postId)}`, { json: { content } });
  }

  /** @returns {Promise<null>} */
  delete(postId) {
    return this.client.api("DELETE", `/posts/${ref(postId)}`);
  }

  /** A user's posts, newest first. @param {string} userId @param {PageQuery} [query] @returns {Promise<Page<Post>>} */
  byUser(userId, query = {}) {
    return this.client.api("GET", `/posts/user/${ref(userId)}`, { query });
  }

  /** @returns {Promise<{liked: boolean, likes_count: number}>} */
  like(postId) {
    return this.client.api("POST", `/posts/like/${ref(postId)}`);
  }

  /** @returns {Promise<{liked: boolean, likes_count: number}>} */
  unlike(postId) {
    return this.client.api("DELETE", `/posts/like/${ref(postId)}`);
  }

  /** A post's comments, oldest first; `after` is the cursor. @param {string} postId
   * @param {{limit?: number, after?: string|null}} [query] @returns {Promise<Page<Comment>>} */
  comments(postId, query = {}) {
    return this.client.api("GET", `/posts/${ref(postId)}/comments`, { query });
  }

  /** @returns {Promise<Comment>} */
  comment(postId, content) {
    return this.client.api("POST", `/posts/comment/${ref(postId)}`, { json: { content } });
  }

  /** @returns {Promise<Comment>} */
  editComment(commentId, content) {
    return this.client.api("PATCH", `/posts/comment/${ref(commentId)}`, { json: { content } });
  }

  /** @returns {Promise<null>} */
  deleteComment(commentId) {
    return this.client.api("DELETE", `/posts/comment/${ref(commentId)}`);
  }
}

class FeedApi {
  constructor(client) {
    this.client = client;
  }

  /** One page of the home timeline, newest first. @param {PageQuery} [query] @returns {Promise<Page<Post>>} */
  page(query = {}) {
    return this.client.api("GET", "/feed", { query });
  }

  /** A Pager over the home timeline (endless scroll). @param {{limit?: number}} [options] @returns {Pager<Post>} */
  pager({ limit } = {}) {
    return new Pager((q) => this.page(q), { limit });
  }
}

class NotificationsApi {
  constructor(client) {
    this.client = client;
  }

  /** A page of notifications, newest first; the server marks the returned ones read
   * (each shows `read` as it was before). @param {PageQuery} [query] @returns {Promise<Page<Notification>>} */
  list(query = {}) {
    return this.client.api("GET", "/notify/notifications", { query });
  }

  /** A Pager over the notifications. @param {{limit?: number}} [options] @returns {Pager<Notification>} */
  pager({ limit } = {}) {
    return new Pager((q) => this.list(q), { limit });
  }

  /** @returns {Promise<number>} */
  async unreadCount() {
    return (await this.client.api("GET", "/notify/unread-count")).count;
  }

  /** @param {string[]} ids */
  async markRead(ids) {
    await this.client.api("POST", "/notify/read", { json: { ids } });
  }

  async markAllRead() {
    await this.client.api("POST", "/notify/read", { json: { all: true } });
  }
}

class ChatApi {
  constructor(client) {
    this.client = client;
  }

  /** The rooms, most recent activity first. @param {PageQuery} [query] @returns {Promise<Page<Room>>} */
  rooms(query = {}) {
    return this.client.api("GET", "/chat/rooms", { query });
  }

  /** Create a room: one other member and no name is a direct room (returned, not duplicated,
   * when it exists). @param {{members: string[], name?: string}} body @returns {Promise<Room>} */
  createRoom({ members, name }) {
    const json = { members };
    if (name !== undefined && name !== null) json.name = name;
    return this.client.api("POST", "/chat/rooms", { json });
  }

  /** The direct room with a user (made on first use). @returns {Promise<Room>} */
  direct(userId) {
    return this.createRoom({ members: [userId] });
  }

  /** A new group room. @param {string} name @param {string[]} members @returns {Promise<Room>} */
  group(name, members) {
    return this.createRoom({ members, name });
  }

  /** A page of a room's messages, newest first (`before`: a message id). @param {string} roomId
   * @param {PageQuery} [query] @returns {Promise<Page<Message>>} */
  history(roomId, query = {}) {
    return this.client.api("GET", `/chat/${ref(roomId)}/history`, { query });
  }

  /** A Pager over a room's history, newest first. @param {string} roomId @param {{limit?: number}} [options]
   * @returns {Pager<Message>} */
  historyPager(roomId, { limit } = {}) {
    return new Pager((q) => this.history(roomId, q), { limit });
  }

  /**
   * Follow a room on the socket: `new_message` events from seq > `sinceSeq` (the replay,
   * then live), each once and in order; resumed by itself after every reconnect.
   * Without `sinceSeq` the stream starts after the room's current last seq (load the
   * history first and pass its newest seq to see no gap). Resolves with `joined`.
   * @param {string} roomId @param {{sinceSeq?: number|null}} [options]
   * @returns {Promise<{type: "joined", room_id: string, last_seq: number}>}
   */
  async join(roomId, { sinceSeq = null } = {}) {
    const c = this.client;
    const known = c._rooms.get(roomId);
    if (known && known.live && c.state === "open") {
      return { type: "joined", room_id: roomId, last_seq: known.lastSeq ?? 0 };
    }
    const room = known ?? { lastSeq: null, buffer: new Map(), live: false, resyncing: false };
    if (!known) {
      room.lastSeq = sinceSeq;
      c._rooms.set(roomId, room);
    } else if (sinceSeq !== null && (room.lastSeq === null || sinceSeq < room.lastSeq)) {
      room.lastSeq = sinceSeq;
    }
    if (c.state !== "open") {
      // joined when the socket is (next) authenticated
      return c.waitFor("joined", (f) => f.room_id === roomId, c.sendTimeout);
    }
    const frame = { type: "join_room", room_id: roomId };
    if (room.lastSeq !== null) frame.since_seq = room.lastSeq;
    try {
      return await c.rpc(frame);
    } catch (err) {
      if (err instanceof ApiError) c._rooms.delete(roomId);
      throw err;
    }
  }

  /** Stop following a room. */
  async leave(roomId) {
    const c = this.client;
    c._rooms.delete(roomId);
    if (c.state === "open") await c.rpc({ type: "leave_room", room_id: roomId });
  }

  /** The last seq delivered for a joined room (null when unknown). */
  lastSeq(roomId) {
    const room = this.client._rooms.get(roomId);
    return room ? room.lastSeq : null;
  }

  /**
   * Send a message; resolves with the stored Message once acked. Idempotent by
   * `clientMsgId` (default: a fresh UUID), so it is sent again after a reconnect until
   * acked or `timeout` (default sendTimeout) passes; the server stores it once.
   * @param {string} roomId @param {string} body @param {{clientMsgId?: string, timeout?: number}} [options]
   * @returns {Promise<Message>}
   */
  async send(roomId, body, { clientMsgId, timeout } = {}) {
    const c = this.client;
    const frame = { type: "send_message", room_id: roomId, body, client_msg_id: clientMsgId ?? randomId() };
    const ack = await c.rpc(frame, { retry: true, timeout: timeout ?? c.sendTimeout });
    return ack.message;
  }

  /** Tell the room this user is (not) typing; dropped when the socket is not open. */
  typing(roomId, state = true) {
    return this.client.send({ type: "typing", room_id: roomId, state: !!state });
  }

  /** Mark a room read up to `seq` (read receipts, unread counts). */
  async markRead(roomId, seq) {
    await this.client.rpc({ type: "read", room_id: roomId, seq });
  }
}

class PresenceApi {
  constructor(client) {
    this.client = client;
  }

  /** Follow users' presence ("presence" events now and on each change); renewed after reconnects. */
  async subscribe(userIds) {
    const c = this.client;
    const fresh = userIds.filter((id) => !c._presence.has(id));
    for (const id of userIds) c._presence.add(id);
    if (c.state !== "open" || !fresh.length) return;
    for (let i = 0; i < fresh.length; i += 2000) {
      await c.rpc({ type: "subscribe_presence", user_ids: fresh.slice(i, i + 2000) });
    }
  }

  /** Whether a user is online now (REST). */
  get(userId) {
    return this.client.users.presence(userId);
  }
}

class CallsApi {
  constructor(client) {
    this.client = client;
  }

  /** STUN/TURN servers for RTCPeerConnection. @returns {Promise<{ice_servers: IceServer[], ttl: number}>} */
  iceServers() {
    return this.client.api("GET", "/calls/ice-servers");
  }

  /** @param {PageQuery} [query] @returns {Promise<Page<Call>>} */
  history(query = {}) {
    return this.client.api("GET", "/calls/history", { query });
  }

  /** Ring a user with an SDP offer; resolves with the Call (then "call_answered" or "call_ended").
   * @param {string} calleeId @param {{media?: "audio"|"video", sdp: string}} offer @returns {Promise<Call>} */
  async invite(calleeId, { media = "video", sdp }) {
    return (await this.client.rpc({ type: "call_invite", callee_id: calleeId, media, sdp })).call;
  }

  /** Answer a ringing call with an SDP answer. @returns {Promise<Call>} */
  async accept(callId, sdp) {
    return (await this.client.rpc({ type: "call_answer", call_id: callId, sdp })).call;
  }

  /** Decline a ringing call. @returns {Promise<Call>} */
  async reject(callId) {
    return (await this.client.rpc({ type: "call_reject", call_id: callId })).call;
  }

  /** End a call. @returns {Promise<Call>} */
  async hangup(callId) {
    return (await this.client.rpc({ type: "call_hangup", call_id: callId })).call;
  }

  /** Relay an ICE candidate (RTCIceCandidate.toJSON()) to the other party. */
  async candidate(callId, candidate) {
    const c = candidate && typeof candidate.toJSON === "function" ? candidate.toJSON() : candidate;
    await this.client.rpc({ type: "call_candidate", call_id: callId, candidate: c });
  }
}

export default Socialhub;
