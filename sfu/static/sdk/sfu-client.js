// Browser SDK for the SFU: a plain ES module, no build step, no dependencies.
//
//   import { connect } from "/sdk/sfu-client.js";
//   const room = await connect("https://sfu.example.com", token);
//   room.on("trackSubscribed", (t) => { if (t.kind === "video") video.srcObject = t.stream; });
//   room.on("data", (m) => console.log(m.from, m.topic, m.payload));
//   await room.publishCamera();
//   await room.publishMicrophone();
//   room.sendData({ text: "hello" }, { topic: "chat" });
//   await room.disconnect();
//
// It speaks the WebSocket protocol of docs/protocol.md: one publisher RTCPeerConnection (the
// browser offers) and one subscriber RTCPeerConnection (the SFU offers, the browser answers).
// There is no trickle ICE. The SFU's candidates are in its SDP; the browser sends its offers
// and answers at once, with whatever candidates it has gathered by then, without waiting for
// gathering to complete (Chrome's TCP phase alone takes ~110 ms, and host candidates are mDNS
// names the SFU cannot resolve anyway): the SFU learns the browser's address from its
// connectivity checks (peer-reflexive candidates), which is how it reaches browsers behind NAT.
//
// Joining costs no round trip of its own. By default the join is an HTTP request
// (`POST /rtc/join`) on the keep-alive connection the page already has to the node (it just
// loaded the page or this module from it): no TCP handshake, and its reply, `joined` with the
// SFU's offer for every track already live inside, comes back one round trip after connect().
// The answer goes back the same way (`POST /rtc/answer`) while the WebSocket opens and attaches
// to the joined participant (`/rtc?session=...`) for events and everything else. Where that is
// not possible (an older node, a proxy that only passes the WebSocket, `httpJoin: false`), the
// join rides in the WebSocket upgrade request instead and `joined` follows the handshake.
// Meanwhile the SDK creates the subscriber connection and (with `connect(..., {publish:
// stream})`) the publish offer, which goes with the join.
//
// When the connection dies (the socket closes unexpectedly, ICE fails or stays disconnected,
// nothing arrives on the tracks we receive while the node does not answer a ping) or the node
// says `move` (it is draining), the SDK joins again, on the same node or on a fallback node
// (the join answer's `fallbacks`, then `options.fallbacks`), with bounded, jittered backoff,
// and publishes its tracks again: `reconnecting` and `reconnected` events (docs/cluster.md).

/** How long a request may wait for its reply. */
const REQUEST_TIMEOUT_MS = 10000;
/** Upper bound on waiting for ICE gathering with `waitForIceGathering: true`. */
const GATHERING_TIMEOUT_MS = 3000;
/** How often a connected room looks at its connections' health (for reconnecting). */
const WATCH_INTERVAL_MS = 1000;

/**
 * How the SDK resumes after a failure (`connect(..., {reconnect: {...}})`).
 * @typedef {Object} ReconnectOptions
 * @property {number} [initialDelayMs=200] wait before the first attempt; doubled each attempt
 * @property {number} [maxDelayMs=5000] ... up to this
 * @property {number} [jitter=0.3] each wait times a random factor in [1 - jitter, 1 + jitter]
 * @property {number} [maxAttempts=12] then give up (`error` "reconnect_failed", disconnected)
 * @property {number} [deadAfterMs=3000] ICE disconnected, or no media while the node does not
 *   answer, this long: the connection is dead
 * @property {() => Promise<string>} [getToken] a fresh token for each attempt (tokens expire)
 */
const RECONNECT_DEFAULTS = {
  initialDelayMs: 200,
  maxDelayMs: 5000,
  jitter: 0.3,
  maxAttempts: 12,
  deadAfterMs: 3000,
  getToken: null,
};

/** Errors after which reconnecting cannot help, or must not happen (another tab took over). */
const RESUME_FINAL_ERRORS = new Set(["unauthorized", "forbidden", "bad_request", "replaced"]);

/**
 * Camera simulcast layers, lowest first: the rids the SFU's simulcast support accepts.
 * @type {RTCRtpEncodingParameters[]}
 */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", maxBitrate: 1_500_000 },
];

/**
 * @typedef {"connecting"|"connected"|"reconnecting"|"disconnected"|"failed"} ConnectionState
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [name] display name shown to others (defaults to the token's name)
 * @property {Object<string, any>} [metadata] free-form data other participants see
 * @property {boolean} [autoSubscribe=true] receive every track published in the room
 * @property {RTCIceServer[]} [iceServers] used in addition to the ones the SFU hands out
 * @property {number} [timeoutMs=10000] how long to wait for the WebSocket and the join reply
 * @property {boolean} [sendQualityMessages=true] send `quality` messages to the SFU for
 *   {@link Room#setQuality} (false: only record the preference, for SFUs without simulcast).
 * @property {MediaStream|PublishOptions} [publish] publish these tracks as part of the join: the
 *   offer is made while the WebSocket opens and sent with the join, so a caller who both talks
 *   and watches is connected after one round trip. connect() does not wait for the answer:
 *   `room.publishing` resolves with the LocalTracks (or rejects, and `error` is emitted, if
 *   the SFU refused them). The offer is made before the SFU's `ice_servers` are known: pass
 *   TURN servers in `iceServers` if publishers need them.
 * @property {boolean} [inlineOffer=true] ask the SFU to put its first offer inside `joined`
 *   (otherwise it follows as an `offer` message; both work).
 * @property {boolean} [httpJoin=true] join with `POST /rtc/join` on the page's keep-alive
 *   connection to the node, then attach the WebSocket (saves the WebSocket's TCP round trip
 *   before the first frame). If the request fails (network or CORS error, no such endpoint,
 *   a proxy's error page, a timeout) the SDK falls back to the WebSocket join by itself; a
 *   refusal of the join itself (`unauthorized`, `forbidden`, `room_full`, `node_full`,
 *   `bad_request`) is thrown as it is. `false`: always join over the WebSocket.
 * @property {boolean} [urlJoin=true] on the WebSocket join: join in the upgrade request
 *   (`/rtc?access_token=...&join=1`), which saves a round trip: `joined` follows the handshake
 *   at once. `false` sends a `join` message instead (nodes older than this SDK need that).
 * @property {boolean} [waitForIceGathering=false] send offers and answers only once ICE
 *   gathering is complete (at most 3 s), with every candidate in them. Not needed with this
 *   SFU, which learns the browser's address from its checks; it makes joins ~10-120 ms slower.
 * @property {string} [captionLanguage] live captions in this language (e.g. "pt"); see
 *   {@link Room#setCaptionLanguage}
 * @property {boolean|ReconnectOptions} [reconnect=true] resume on this or a fallback node when
 *   the connection dies or the node drains; `false`: a dead connection ends the room
 * @property {string[]} [fallbacks] node URLs to try after the ones the node names itself
 */

/**
 * @typedef {Object} PublishOptions
 * @property {MediaStream} stream
 * @property {boolean} [simulcast=false] three layers (rids q/h/f) for the video track
 * @property {string} [videoSource="camera"]
 * @property {string} [audioSource="microphone"]
 */

/**
 * Milliseconds from the start of connect() to each step of the join (absent until it happens).
 * @typedef {Object} JoinTimings
 * @property {number} [wsOpen] the WebSocket is open (on the WebSocket join the join went with
 *   its upgrade request; on the HTTP join it opens after `joined`, to attach)
 * @property {number} [joined] `joined` arrived (the HTTP join's response, or on the socket)
 * @property {number} [attached] HTTP join: the SFU confirmed the WebSocket's attach
 * @property {number} [offer] the SFU's first subscriber offer arrived
 * @property {number} [answerSent] our answer to it was sent
 * @property {number} [subscriberConnected] the subscriber connection is connected (ICE + DTLS)
 * @property {number} [publishAnswered] the answer to our first publish offer arrived
 * @property {number} [publisherConnected]
 * @property {number} [firstTrack] the first `trackSubscribed`
 */

/**
 * @typedef {Object} TrackInfo
 * @property {string} id track id (e.g. "TR_1a2b3c")
 * @property {"audio"|"video"} kind
 * @property {string} publisher identity of the publishing participant
 * @property {string} source "camera", "microphone", "screen" or "" (as the publisher said)
 * @property {string} name
 * @property {string} codec e.g. "video/VP8"
 */

/**
 * @typedef {Object} ParticipantInfo
 * @property {string} sid
 * @property {string} identity
 * @property {string} name
 * @property {string} kind "websocket", "whip" or "whep"
 * @property {Object<string, any>} metadata
 * @property {TrackInfo[]} tracks
 */

/**
 * A track the SFU sends us.
 * @typedef {Object} RemoteTrack
 * @property {string} id
 * @property {"audio"|"video"} kind
 * @property {string} publisher
 * @property {string} source
 * @property {string} name
 * @property {string} mid the subscriber m-line carrying it (m-lines are reused)
 * @property {MediaStreamTrack} track
 * @property {MediaStream} stream a stream holding just this track, ready for `srcObject`
 * @property {RTCRtpReceiver} receiver
 */

/**
 * A track we publish.
 * @typedef {Object} LocalTrack
 * @property {string} id track id the SFU gave it
 * @property {"audio"|"video"} kind
 * @property {string} source
 * @property {string} mid
 * @property {MediaStreamTrack} track
 * @property {RTCRtpSender} sender
 */

/**
 * A data message relayed by the SFU.
 * @typedef {Object} DataMessage
 * @property {string} from sender identity
 * @property {string} topic
 * @property {any} payload
 */

/**
 * A live caption from the room's captioner (topic `captions/<lang>`, sent to us alone).
 * Partials (`final: false`) revise the phrase `id` until its final arrives.
 * @typedef {Object} Caption
 * @property {string} id phrase id ("<track>:<seq>"): partials and the final of a phrase share it
 * @property {boolean} final
 * @property {string} text the caption in `lang`
 * @property {string} lang the language we asked for
 * @property {string} sourceLang what the host spoke
 * @property {string} [sourceText] the host's words (finals only)
 * @property {boolean} untranslated no offline model for sourceLang → lang: `text` is the source
 * @property {string} speaker identity of the host
 * @property {string} from identity of the captioner
 * @property {number} start unix seconds the phrase started
 * @property {number} end unix seconds it ended (partials: the audio so far)
 */

/** Data topics of live captions. */
export const CAPTIONS_SUBSCRIBE_TOPIC = "captions/subscribe";
const CAPTIONS_TOPIC_PREFIX = "captions/";

/**
 * Per-track quality preference (simulcast layer choice).
 * @typedef {Object} QualityPreference
 * @property {"auto"|"low"|"medium"|"high"} [quality="auto"]
 * @property {number} [maxWidth] largest useful width in pixels (the size it is shown at)
 * @property {number} [maxHeight]
 */

/**
 * A simulcast layer switch for a track we receive (`qualityChanged` event).
 * @typedef {Object} QualityChange
 * @property {string} trackId
 * @property {number} spatial 0 = lowest layer
 * @property {number} temporal
 * @property {string|null} rid
 * @property {number|null} width from the layer's last keyframe
 * @property {number|null} height
 * @property {"start"|"up"|"down"} reason
 */

/** Join refusals the WebSocket join would repeat: no point falling back to it for these. */
const FINAL_JOIN_ERRORS = new Set([
  "unauthorized",
  "forbidden",
  "room_full",
  "node_full",
  "draining",
  "bad_request",
  "redirect",
]);

/** How many times connect() follows a node that sends the join to another one. */
const MAX_REDIRECTS = 3;

/** The HTTP join did not work for a reason the WebSocket join may not share. */
class HttpJoinUnavailable extends Error {}

/** An `error` message from the SFU, or a request that failed or timed out. */
export class SfuError extends Error {
  /**
   * @param {string} code the protocol's error code (e.g. "forbidden") or "timeout"/"closed"
   * @param {string} message
   * @param {object} [details] the whole error message (a `redirect` names its `node`)
   */
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.name = "SfuError";
    this.code = code;
    this.details = details || {};
  }
}

/**
 * Join a room.
 * @param {string} url base URL of the SFU: http(s)://host:port[/prefix] (ws(s):// also works)
 * @param {string} token access token (JWT) naming the room and what we may do
 * @param {ConnectOptions} [options]
 * @returns {Promise<Room>} once joined; tracks already live are then subscribed automatically
 *   (their offer came with the join and is being answered)
 */
export async function connect(url, token, options = {}) {
  for (let hop = 0; ; hop++) {
    const room = new Room(options);
    try {
      await room._connect(url, token);
      return room;
    } catch (err) {
      // a full node names another node of its region: join there, with the same token
      const next = err instanceof SfuError && err.code === "redirect" && err.details.node;
      if (!next || !next.url || hop >= MAX_REDIRECTS) throw err;
      await room.disconnect().catch(() => {});
      url = next.url;
    }
  }
}

/**
 * URLs from a `fallbacks` list (join answer, `move` event): strings or `{url}` objects.
 * @param {any} value
 * @returns {string[]}
 */
export function fallbackUrls(value) {
  if (!Array.isArray(value)) return [];
  const urls = [];
  for (const item of value.slice(0, 16)) {
    const url = item && typeof item === "object" ? item.url : item;
    if (typeof url === "string" && /^https?:\/\//.test(url)) urls.push(url.replace(/\/+$/, ""));
  }
  return urls;
}

/**
 * The nodes to try, in order, without duplicates: after a `move` the nodes it names (never
 * the draining node itself), else the node we were on first; then the ones the node named,
 * then the application's.
 * @param {string} current
 * @param {string[]} learned
 * @param {string[]} configured
 * @param {string[]|null} moving
 * @returns {string[]}
 */
export function nextTargets(current, learned, configured, moving = null) {
  const strip = (u) => String(u || "").replace(/\/+$/, "");
  const here = strip(current);
  const order = moving && moving.length ? [...moving, ...learned, ...configured] : [here, ...learned, ...configured];
  const targets = [];
  for (const raw of order) {
    const url = strip(raw);
    if (url && !targets.includes(url) && !(moving && moving.length && url === here)) targets.push(url);
  }
  return targets.length ? targets : [here];
}

/**
 * Milliseconds to wait before attempt `attempt` (0 first): doubling, capped, jittered.
 * @param {ReconnectOptions} policy
 * @param {number} attempt
 * @param {() => number} [rand]
 */
export function backoffMs(policy, attempt, rand = Math.random) {
  const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(attempt, 30));
  return base * (1 - policy.jitter + 2 * policy.jitter * rand());
}

/**
 * `http://host:8080/x` → `ws://host:8080/x/rtc`.
 * @param {string} url
 * @returns {string}
 */
export function signallingUrl(url) {
  const u = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (!u.pathname.endsWith("/rtc")) u.pathname = u.pathname.replace(/\/+$/, "") + "/rtc";
  u.search = "";
  u.hash = "";
  return u.toString();
}

/**
 * `http://host:8080/x` and `join` → `http://host:8080/x/rtc/join` (the HTTP join's endpoints).
 * @param {string} url
 * @param {"join"|"answer"|"leave"} name
 * @returns {string}
 */
export function httpJoinUrl(url, name) {
  const u = new URL(signallingUrl(url));
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname += `/${name}`;
  return u.toString();
}

/**
 * Resolve once ICE gathering is complete (or after a time limit: better some candidates late
 * than a join that hangs on an unreachable STUN server).
 * @param {RTCPeerConnection} pc
 * @param {number} [timeoutMs]
 * @returns {Promise<void>}
 */
export function iceGatheringComplete(pc, timeoutMs = GATHERING_TIMEOUT_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Put VP8 first: every SFU path (forwarding, simulcast) supports it. */
function preferVp8(transceiver) {
  if (typeof transceiver.setCodecPreferences !== "function" || !RTCRtpSender.getCapabilities) {
    return;
  }
  const caps = RTCRtpSender.getCapabilities("video");
  if (!caps) return;
  const vp8 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/vp8");
  const rest = caps.codecs.filter((c) => c.mimeType.toLowerCase() !== "video/vp8");
  if (vp8.length) transceiver.setCodecPreferences([...vp8, ...rest]);
}

/** A tiny event emitter; listener exceptions are logged, never break the SDK. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /**
   * Listen to an event.
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void} call it to stop listening
   */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {Function} listener
   */
  off(event, listener) {
    const set = this._listeners.get(event);
    if (set) set.delete(listener);
  }

  /**
   * Listen to the next occurrence only.
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void}
   */
  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        console.error(`sfu-client: a '${event}' listener threw`, err);
      }
    }
  }
}

/**
 * A joined room. Get one from {@link connect}.
 *
 * Events (`room.on(name, listener)`):
 * - `participantJoined` (ParticipantInfo), `participantLeft` (ParticipantInfo)
 * - `trackPublished` (TrackInfo), `trackUnpublished` (TrackInfo): tracks of others
 * - `trackSubscribed` (RemoteTrack), `trackUnsubscribed` (RemoteTrack): media we receive
 * - `localTrackPublished` (LocalTrack)
 * - `connectionStateChanged` (ConnectionState)
 * - `data` (DataMessage)
 * - `caption` (Caption): live captions in the language set with setCaptionLanguage()
 * - `error` (SfuError): errors the SFU sent on its own (not replies to a request)
 * - `qualityChanged` (QualityChange): the SFU switched the simulcast layer it sends us for a
 *   track (bandwidth estimate or our setQuality() wish)
 * - `reconnecting` ({reason, attempt, url}): the connection died or the node drains; the SDK
 *   is joining again (state `reconnecting`; remote tracks are unsubscribed meanwhile)
 * - `reconnected` ({url, reason, attempts, tracks}): in the room again (state `connected`),
 *   our tracks published again (`tracks`: old track id → new one); `trackSubscribed` follows
 */
export class Room extends Emitter {
  /** @param {ConnectOptions} [options] */
  constructor(options = {}) {
    super();
    this.options = {
      autoSubscribe: true,
      timeoutMs: REQUEST_TIMEOUT_MS,
      sendQualityMessages: true,
      ...options,
    };
    /** @type {string} */
    this.name = "";
    /** @type {ParticipantInfo|null} */
    this.localParticipant = null;
    /** @type {Map<string, ParticipantInfo>} other participants by identity */
    this.participants = new Map();
    /** @type {Map<string, TrackInfo>} tracks others publish, by track id */
    this.tracks = new Map();
    /** @type {Map<string, RemoteTrack>} tracks we receive, by track id */
    this.remoteTracks = new Map();
    /** @type {Map<string, LocalTrack>} tracks we publish, by track id */
    this.localTracks = new Map();
    /** @type {Map<string, QualityPreference>} preferences set with setQuality(), by track id */
    this.qualityPreferences = new Map();
    /** @type {{publish: boolean, subscribe: boolean}} */
    this.grants = { publish: false, subscribe: false };
    /** @type {RTCIceServer[]} */
    this.iceServers = [];
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** @type {RTCPeerConnection|null} */
    this.publisherPc = null;
    /** @type {RTCPeerConnection|null} */
    this.subscriberPc = null;
    /**
     * How connect() joined: "http" (`POST /rtc/join`, then the WebSocket attached) or
     * "websocket" (`httpJoin: false`, or the HTTP join was not possible).
     * @type {"http"|"websocket"|null}
     */
    this.joinPath = null;
    this._ws = null;
    this._url = "";
    /** @type {string|null} the HTTP join's session id, for attaching and for POSTs */
    this._session = null;
    this._attached = false;
    /** messages sent while the attaching WebSocket is still opening, in order */
    this._outbox = [];
    this._nextRequestId = 1;
    this._pending = new Map();
    this._offers = Promise.resolve();
    this._publishing = Promise.resolve();
    this._ownedTracks = new Set();
    /** @type {string|null} language of the live captions we asked for */
    this.captionLanguage = options.captionLanguage || null;
    /** @type {JoinTimings} */
    this.timings = {};
    this._t0 = 0;
    // Settled when connect() is done: trackSubscribed must not fire before its caller listens.
    this._connectDone = false;
    /**
     * With `connect(..., {publish})`: the tracks published with the join, once the SFU has
     * answered (rejects, and emits `error`, if it refused them).
     * @type {Promise<LocalTrack[]>}
     */
    this.publishing = Promise.resolve([]);
    this._afterConnect = new Promise((resolve) => {
      this._resolveAfterConnect = resolve;
    });
    /** @type {ReconnectOptions|null} */
    this._reconnect =
      options.reconnect === false
        ? null
        : { ...RECONNECT_DEFAULTS, ...(typeof options.reconnect === "object" ? options.reconnect : {}) };
    /** @type {string[]} other nodes, as the node named them (join answer, `move`) */
    this.fallbacks = [];
    /** successful resumes so far */
    this.resumes = 0;
    this._token = "";
    this._resuming = false;
    this._leaving = false; // disconnect() called
    this._final = null; // an error after which we must not come back (e.g. "replaced")
    this._watchTimer = null;
    this._health = { packets: -1, changedAt: 0, disconnectedSince: null, checking: false };
  }

  _mark(step) {
    if (this.timings[step] === undefined) this.timings[step] = performance.now() - this._t0;
  }

  // -- connecting -------------------------------------------------------------------------------

  async _connect(url, token) {
    this._t0 = performance.now();
    this._url = url;
    this._token = token;
    await this._join(url, token, this.options.publish ? publishItems(this.options.publish) : null);
    this._startWatch();
  }

  /** One join on `url` (the first, or a resume's): subscriber connection, publish offer, join. */
  async _join(url, token, items) {
    // While the join is under way: the subscriber connection (the SFU's offer comes with
    // `joined`) and the publish offer, if any. Neither needs anything from the SFU.
    this.subscriberPc = this._createPc();
    let publishing = null;
    try {
      publishing = items ? this._preparePublish(items) : null;
      if (publishing) publishing.catch(() => {}); // (awaited below)
      if (this.options.httpJoin !== false && (await this._joinOverHttp(url, token, publishing))) {
        return;
      }
    } catch (err) {
      this._teardown("disconnected");
      throw err;
    }
    await this._joinOverWebSocket(url, token, publishing);
  }

  /**
   * `POST /rtc/join` on the page's keep-alive connection; then the WebSocket attaches.
   * @returns {Promise<boolean>} false: not possible here, join over the WebSocket instead
   */
  async _joinOverHttp(url, token, publishing) {
    const prepared = publishing ? await publishing : null;
    const body = {
      token,
      auto_subscribe: this.options.autoSubscribe !== false,
      inline_offer: this.options.inlineOffer !== false,
    };
    if (this.options.name) body.name = this.options.name;
    if (this.options.metadata) body.metadata = this.options.metadata;
    if (prepared) body.publish = { sdp: prepared.sdp, tracks: prepared.tracks };
    let reply;
    try {
      reply = await this._post("join", body, this.options.timeoutMs);
    } catch (err) {
      if (err instanceof SfuError && FINAL_JOIN_ERRORS.has(err.code)) throw err;
      console.info(`sfu-client: HTTP join not possible (${err.message}); joining over WebSocket`);
      return false;
    }
    if (!reply || reply.type !== "joined" || typeof reply.session !== "string") {
      console.info("sfu-client: unexpected HTTP join reply, joining over the WebSocket");
      return false;
    }
    this.joinPath = "http";
    this._session = reply.session;
    this._onJoined(reply); // (queues the answer to the offer inside: it goes by POST)
    this._attachSocket(url, reply.session);
    if (prepared) {
      // Applied once our answer to the SFU's offer is out: both at once compete for the
      // browser's WebRTC thread, and the answer is what the first picture waits for.
      this.publishing = reply.publish_error
        ? Promise.reject(new SfuError(reply.publish_error.code, reply.publish_error.message))
        : this._offers.then(() => this._applyPublishAnswer(prepared, reply.publish_answer));
      this.publishing.catch((err) => this._emit("error", toSfuError(err, "publish_failed")));
    }
    this._connectDone = true;
    this._resolveAfterConnect();
    return true;
  }

  /**
   * POST a JSON body (as text/plain: a CORS "simple request", no preflight round trip) to
   * `/rtc/<name>`. Resolves with the JSON reply (null for 204); rejects with an SfuError for a
   * protocol error reply, with HttpJoinUnavailable for anything else.
   */
  async _post(name, body, timeoutMs, extra = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      let response;
      try {
        response = await fetch(httpJoinUrl(this._url, name), {
          method: "POST",
          body: JSON.stringify(body),
          cache: "no-store",
          signal: controller.signal,
          ...extra,
        });
      } catch (err) {
        throw new HttpJoinUnavailable(`POST /rtc/${name}: ${errorText(err)}`);
      }
      if (response.status === 204) return null;
      let data = null;
      try {
        data = await response.json();
      } catch {
        // not JSON: not this protocol's reply (e.g. a proxy's error page)
      }
      if (data && data.type === "error" && typeof data.code === "string") {
        throw new SfuError(data.code, data.message || "", data);
      }
      if (!response.ok || !data) {
        throw new HttpJoinUnavailable(`POST /rtc/${name}: HTTP ${response.status}`);
      }
      return data;
    } catch (err) {
      if (err instanceof SfuError || err instanceof HttpJoinUnavailable) throw err;
      throw new HttpJoinUnavailable(`POST /rtc/${name}: ${errorText(err)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Open `/rtc?session=...` for the HTTP-joined participant: its events and requests. */
  _attachSocket(url, session) {
    const u = new URL(signallingUrl(url));
    u.searchParams.set("session", session);
    const ws = new WebSocket(u.toString());
    this._ws = ws;
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onopen = () => {
      this._mark("wsOpen");
      const queued = this._outbox;
      this._outbox = [];
      for (const message of queued) ws.send(JSON.stringify(message));
    };
    ws.onclose = (event) => this._onSocketClosed(event);
    this._awaitReply("attach", "attach", this.options.timeoutMs).then(
      () => {
        this._attached = true;
        this._mark("attached");
      },
      (err) => {
        if (this.state === "disconnected" || this._ws !== ws) return;
        this._emit("error", toSfuError(err, "attach_failed"));
        this._lost("the WebSocket did not attach");
      },
    );
  }

  /** The answer to the SFU's offer: on the socket once it is open, before that by POST. */
  _sendAnswer(sdp) {
    const ws = this._ws;
    if (!this._session || (ws && ws.readyState === WebSocket.OPEN)) {
      this._send({ type: "answer", sdp });
      return;
    }
    this._post("answer", { session: this._session, sdp }, this.options.timeoutMs).catch((err) => {
      if (this.state !== "connected") return;
      if (err instanceof SfuError) {
        this._emit("error", err);
      } else {
        this._send({ type: "answer", sdp }); // (the socket takes it once it is open)
      }
    });
  }

  async _joinOverWebSocket(url, token, publishing) {
    this.joinPath = "websocket";
    const urlJoin = this.options.urlJoin !== false;
    const ws = new WebSocket(urlJoin ? this._joinUrl(url, token) : signallingUrl(url));
    this._ws = ws;
    // With the join in the URL, `joined` follows the upgrade at once: listen from the start.
    ws.onmessage = (event) => this._onMessage(event.data);
    const joining = urlJoin ? this._awaitReply("join", "join", this.options.timeoutMs) : null;
    if (joining) joining.catch(() => {}); // (awaited below; never an unhandled rejection)
    const opened = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(new SfuError("timeout", "the SFU did not accept the WebSocket in time"));
      }, this.options.timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onerror = () => {
        clearTimeout(timer);
        reject(new SfuError("connection_failed", `cannot open ${signallingUrl(url)}`));
      };
    });
    try {
      await Promise.all([opened, publishing]);
    } catch (err) {
      this._teardown("disconnected");
      throw err;
    }
    ws.onclose = (event) => this._onSocketClosed(event);
    ws.onerror = null;
    const prepared = publishing ? await publishing : null;
    this._mark("wsOpen");
    try {
      // connect() resolves as soon as we are in the room; the publish answer (if any) is
      // applied in the background (`room.publishing`): waiting for it would hold back
      // `trackSubscribed`, and a page that attaches its <video> late misses the first frame.
      let answered;
      if (urlJoin) {
        // The join is under way; a publish offer follows it on the socket without waiting.
        answered = prepared
          ? this._request(
              { type: "publish", sdp: prepared.sdp, tracks: prepared.tracks },
              this.options.timeoutMs,
            )
          : null;
        if (answered) answered.catch(() => {});
        await joining;
      } else {
        const join = { type: "join", token, auto_subscribe: this.options.autoSubscribe !== false };
        if (this.options.inlineOffer !== false) join.inline_offer = true;
        if (this.options.name) join.name = this.options.name;
        if (this.options.metadata) join.metadata = this.options.metadata;
        if (prepared) join.publish = { sdp: prepared.sdp, tracks: prepared.tracks };
        const reply = await this._request(join, this.options.timeoutMs);
        answered = reply.publish_error
          ? Promise.reject(new SfuError(reply.publish_error.code, reply.publish_error.message))
          : Promise.resolve(reply.publish_answer);
      }
      if (prepared) {
        this.publishing = answered.then((answer) => this._applyPublishAnswer(prepared, answer));
        this.publishing.catch((err) => this._emit("error", toSfuError(err, "publish_failed")));
      }
    } catch (err) {
      this._teardown("disconnected");
      throw err;
    } finally {
      this._connectDone = true;
      this._resolveAfterConnect();
    }
  }

  /** `/rtc?access_token=...&join=1&...`: the SFU joins us while upgrading the connection. */
  _joinUrl(url, token) {
    const u = new URL(signallingUrl(url));
    const query = u.searchParams;
    query.set("access_token", token);
    query.set("join", "1");
    if (this.options.inlineOffer !== false) query.set("inline_offer", "1");
    if (this.options.autoSubscribe === false) query.set("auto_subscribe", "0");
    if (this.options.name) query.set("name", this.options.name);
    if (this.options.metadata) query.set("metadata", JSON.stringify(this.options.metadata));
    return u.toString();
  }

  /** The `joined` reply: handled here (before any offer that follows it is processed). */
  _onJoined(msg) {
    this._mark("joined");
    this.name = msg.room;
    this.localParticipant = msg.participant;
    this.grants = msg.grants || this.grants;
    /** The node serving this room: {node_id, region, url} (docs/cluster.md, "Routing"). */
    this.node = msg.node || null;
    this.iceServers = [...(msg.ice_servers || []), ...(this.options.iceServers || [])];
    if (msg.fallbacks) this.fallbacks = fallbackUrls(msg.fallbacks);
    if ((msg.ice_servers || []).length && this.subscriberPc) {
      // made before the SFU's servers were known; it has not gathered yet, so this applies
      this.subscriberPc.setConfiguration({
        ...this.subscriberPc.getConfiguration(),
        iceServers: this.iceServers,
      });
    }
    for (const p of msg.participants || []) this.participants.set(p.identity, p);
    for (const t of msg.tracks || []) this.tracks.set(t.id, t);
    this._setState("connected");
    if (msg.offer) this._queueOffer({ type: "offer", ...msg.offer });
    if (this.captionLanguage) this._askForCaptions(this._captioners());
  }

  _queueOffer(msg) {
    this._offers = this._offers
      .then(() => this._answerOffer(msg))
      .catch((err) => this._emit("error", toSfuError(err, "negotiation_failed")));
  }

  // -- signalling ---------------------------------------------------------------------------------

  _send(message) {
    const ws = this._ws;
    // HTTP join: until the socket is open (or even created: `joined` handlers may send),
    // messages wait in the outbox and go out, in order, as soon as it opens.
    const attaching = this._session && (!ws || ws.readyState === WebSocket.CONNECTING);
    if (attaching && this.state !== "disconnected") {
      this._outbox.push(message);
      return;
    }
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      throw new SfuError("closed", "not connected");
    }
    ws.send(JSON.stringify(message));
  }

  /** A reply the SFU will send with this request id without our asking (the URL join). */
  _awaitReply(requestId, type, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new SfuError("timeout", `no reply to '${type}'`));
      }, timeoutMs);
      this._pending.set(requestId, { resolve, reject, timer, type });
    });
  }

  _request(message, timeoutMs = REQUEST_TIMEOUT_MS) {
    const requestId = this._nextRequestId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new SfuError("timeout", `no reply to '${message.type}'`));
      }, timeoutMs);
      this._pending.set(requestId, { resolve, reject, timer, type: message.type });
      try {
        this._send({ ...message, request_id: requestId });
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(requestId);
        reject(err);
      }
    });
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.type === "joined") this._onJoined(msg);
    const pending = msg.request_id !== undefined ? this._pending.get(msg.request_id) : undefined;
    if (pending) {
      this._pending.delete(msg.request_id);
      clearTimeout(pending.timer);
      if (msg.type === "error") pending.reject(new SfuError(msg.code, msg.message, msg));
      else pending.resolve(msg);
      return;
    }
    switch (msg.type) {
      case "offer":
        this._queueOffer(msg);
        break;
      case "participant_joined":
        this._onParticipantJoined(msg.participant);
        break;
      case "participant_left":
        this._onParticipantLeft(msg.identity);
        break;
      case "track_published":
        this._onTrackPublished(msg.track);
        break;
      case "track_unpublished":
        this._onTrackUnpublished(msg.track_id);
        break;
      case "layer_changed":
        this._emit("qualityChanged", {
          trackId: msg.track_id,
          spatial: msg.spatial,
          temporal: msg.temporal,
          rid: msg.rid,
          width: msg.width,
          height: msg.height,
          reason: msg.reason,
        });
        break;
      case "data":
        this._emit("data", { from: msg.from, topic: msg.topic || "", payload: msg.payload });
        if (isCaption(msg)) this._emit("caption", toCaption(msg));
        break;
      case "move":
        this.fallbacks = fallbackUrls(msg.fallbacks).length ? fallbackUrls(msg.fallbacks) : this.fallbacks;
        if (this._reconnect) this._resume(`moved: ${msg.reason || ""}`, this.fallbacks);
        break;
      case "error":
        this._emit("error", new SfuError(msg.code, msg.message));
        if (RESUME_FINAL_ERRORS.has(msg.code)) this._final = msg.code;
        if (msg.code === "replaced") this._teardown("disconnected");
        else if (msg.code === "dropped") this._lost(`dropped: ${msg.message}`);
        break;
      default:
        break; // pong, left, and message types newer than this SDK
    }
  }

  _onSocketClosed(event) {
    if (event && event.target && event.target !== this._ws) return; // (a socket given up)
    if (this._session && !this._attached) this._leaveOverHttp(); // (never attached: leave now)
    this._rejectPending();
    if (event && event.code === 4401) this._final = "unauthorized";
    this._lost(`the signalling socket closed (${event ? event.code : "?"})`);
  }

  _rejectPending() {
    for (const [, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new SfuError("closed", "the connection to the SFU closed"));
    }
    this._pending.clear();
  }

  // -- failures: resume on this or another node ------------------------------------------------------

  /** The connection is dead: resume (if allowed and possible), else end. */
  _lost(reason) {
    if (this.state === "disconnected" || this._resuming || this._leaving) return;
    if (this._reconnect && !this._final && this.state === "connected") {
      this._resume(reason, null);
    } else {
      this._teardown("disconnected");
    }
  }

  /**
   * Leave the dead (or draining) connection and join again, on the targets in turn, with
   * backoff; publish our tracks again. `moving`: the nodes a `move` named.
   */
  async _resume(reason, moving) {
    if (this._resuming || this._leaving || this.state === "disconnected" || !this._reconnect) return;
    this._resuming = true;
    const policy = this._reconnect;
    const oldUrl = this._url;
    const locals = [...this.localTracks.values()];
    const items = locals.map((l) => ({
      track: l.track,
      stream: l.stream || new MediaStream([l.track]),
      source: l.source,
      simulcast: !!l.simulcast,
    }));
    console.info(`sfu-client: reconnecting (${reason})`);
    this._dropConnection();
    this._setState("reconnecting");
    const targets = nextTargets(oldUrl, this.fallbacks, this.options.fallbacks || [], moving);
    let lastError = null;
    for (let attempt = 0; attempt < policy.maxAttempts; attempt++) {
      const url = targets[attempt % targets.length];
      this._emit("reconnecting", { reason, attempt: attempt + 1, url });
      await new Promise((resolve) => setTimeout(resolve, backoffMs(policy, attempt)));
      if (!this._resuming) return; // disconnect() meanwhile
      try {
        if (policy.getToken) this._token = await policy.getToken();
        this._url = url;
        await this._join(url, this._token, items.length ? items : null);
        const published = await withTimeout(this.publishing, this.options.timeoutMs, "publish");
        if (!this._resuming) return;
        this._resuming = false;
        this.resumes += 1;
        const tracks = {};
        locals.forEach((old, i) => {
          if (published[i]) tracks[old.id] = published[i].id;
        });
        console.info(`sfu-client: reconnected to ${url}`);
        this._emit("reconnected", { url, reason, attempts: attempt + 1, tracks });
        return;
      } catch (err) {
        lastError = err;
        if (!this._resuming) return;
        this._dropConnection();
        this._setState("reconnecting");
        if (err instanceof SfuError && RESUME_FINAL_ERRORS.has(err.code)) break;
      }
    }
    if (!this._resuming) return;
    this._resuming = false;
    this._emit("error", new SfuError("reconnect_failed", `${reason}; last: ${errorText(lastError)}`));
    this._teardown("disconnected");
  }

  /** Give up the socket and both peer connections (leaving first if the socket still works:
   * a node that is alive must not keep us twice); the owned tracks stay. */
  _dropConnection() {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "leave" }));
        if (ws.readyState <= WebSocket.OPEN) ws.close();
      } catch {
        // gone already
      }
    }
    for (const pc of [this.publisherPc, this.subscriberPc]) if (pc) pc.close();
    this.publisherPc = null;
    this.subscriberPc = null;
    this._rejectPending();
    this._session = null;
    this._attached = false;
    this._leftOverHttp = false;
    this._outbox = [];
    this._offers = Promise.resolve();
    this._publishing = Promise.resolve();
    this.publishing = Promise.resolve([]);
    this._health = { packets: -1, changedAt: performance.now(), disconnectedSince: null, checking: false };
    const remotes = [...this.remoteTracks.values()];
    this.remoteTracks.clear();
    this.localTracks.clear();
    this.tracks.clear();
    this.participants.clear();
    for (const remote of remotes) this._emit("trackUnsubscribed", remote);
  }

  _startWatch() {
    if (!this._reconnect || this._watchTimer || this.state === "disconnected") return;
    this._health.changedAt = performance.now();
    this._watchTimer = setInterval(() => this._checkHealth(), WATCH_INTERVAL_MS);
  }

  /** ICE failed or disconnected too long, or no media while the node is silent: resume. */
  async _checkHealth() {
    const health = this._health;
    if (this._resuming || this.state !== "connected" || health.checking) return;
    health.checking = true;
    try {
      const now = performance.now();
      const deadMs = this._reconnect.deadAfterMs;
      const pcs = [this.publisherPc, this.subscriberPc].filter(Boolean);
      if (pcs.some((pc) => pc.connectionState === "failed")) return this._lost("ICE failed");
      if (pcs.some((pc) => pc.connectionState === "disconnected")) {
        if (health.disconnectedSince === null) health.disconnectedSince = now;
        else if (now - health.disconnectedSince >= deadMs) return this._lost("ICE disconnected");
      } else {
        health.disconnectedSince = null;
      }
      const packets = await this._packetsReceived();
      if (health !== this._health) return; // (a resume started meanwhile)
      if (packets === null || packets !== health.packets) {
        health.packets = packets === null ? -1 : packets;
        health.changedAt = now;
      } else if (now - health.changedAt >= deadMs) {
        try {
          await this._request({ type: "ping" }, deadMs);
          health.changedAt = performance.now(); // the node is fine: the publisher is quiet
        } catch {
          if (health === this._health) this._lost("no media, and the node does not answer");
        }
      }
    } finally {
      health.checking = false;
    }
  }

  /** RTP packets received so far on the tracks we receive (null: none, or not connected). */
  async _packetsReceived() {
    const pc = this.subscriberPc;
    if (!pc || !this.remoteTracks.size || pc.connectionState !== "connected") return null;
    let total = 0;
    (await pc.getStats()).forEach((stats) => {
      if (stats.type === "inbound-rtp") total += stats.packetsReceived || 0;
    });
    return total;
  }

  // -- room state ---------------------------------------------------------------------------------

  _onParticipantJoined(participant) {
    this.participants.set(participant.identity, participant);
    for (const t of participant.tracks || []) this.tracks.set(t.id, t);
    if (this.captionLanguage && isCaptioner(participant)) this._askForCaptions([participant.identity]);
    this._emit("participantJoined", participant);
  }

  _onParticipantLeft(identity) {
    const participant = this.participants.get(identity) || { identity, tracks: [] };
    this.participants.delete(identity);
    for (const [id, info] of this.tracks) {
      if (info.publisher === identity) this._onTrackUnpublished(id);
    }
    this._emit("participantLeft", participant);
  }

  _onTrackPublished(track) {
    this.tracks.set(track.id, track);
    const owner = this.participants.get(track.publisher);
    if (owner) owner.tracks = [...(owner.tracks || []).filter((t) => t.id !== track.id), track];
    this._emit("trackPublished", track);
  }

  _onTrackUnpublished(trackId) {
    const info = this.tracks.get(trackId);
    this.tracks.delete(trackId);
    const remote = this.remoteTracks.get(trackId);
    if (remote) {
      this.remoteTracks.delete(trackId);
      this._emit("trackUnsubscribed", remote);
    }
    if (info) {
      const owner = this.participants.get(info.publisher);
      if (owner) owner.tracks = (owner.tracks || []).filter((t) => t.id !== trackId);
      this._emit("trackUnpublished", info);
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("connectionStateChanged", state);
  }

  _createPc() {
    const iceServers = this.iceServers.length ? this.iceServers : this.options.iceServers || [];
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") {
        this._mark(pc === this.subscriberPc ? "subscriberConnected" : "publisherConnected");
      }
      const current = pc === this.publisherPc || pc === this.subscriberPc;
      if (pc.connectionState === "failed" && this.state === "connected" && current) {
        if (this._reconnect) this._lost("ICE failed");
        else this._setState("failed");
      }
    });
    return pc;
  }

  // -- subscribing (the SFU offers) ------------------------------------------------------------------

  async _answerOffer(msg) {
    if (this.state !== "connected") return;
    this._mark("offer");
    if (!this.subscriberPc) this.subscriberPc = this._createPc();
    const pc = this.subscriberPc;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    if (this.options.waitForIceGathering) await iceGatheringComplete(pc);
    if (this.state !== "connected") return;
    this._sendAnswer(pc.localDescription.sdp);
    this._mark("answerSent");
    if (!this._connectDone) {
      // (rare: our answer went out before connect() returned) let its caller listen first
      await this._afterConnect;
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (this.state !== "connected") return;
    }
    this._syncRemoteTracks(pc, msg.tracks || {});
  }

  /** Compare the offer's `{mid: track_id}` map with what we receive now; emit the changes. */
  _syncRemoteTracks(pc, mapping) {
    const byMid = new Map(pc.getTransceivers().map((t) => [t.mid, t]));
    const wanted = new Map();
    for (const [mid, trackId] of Object.entries(mapping)) {
      if (byMid.has(mid)) wanted.set(trackId, mid);
    }
    for (const [trackId, remote] of [...this.remoteTracks]) {
      if (wanted.get(trackId) !== remote.mid) {
        this.remoteTracks.delete(trackId);
        this._emit("trackUnsubscribed", remote);
      }
    }
    for (const [trackId, mid] of wanted) {
      if (this.remoteTracks.has(trackId)) continue;
      const transceiver = byMid.get(mid);
      const track = transceiver.receiver.track;
      const info = this.tracks.get(trackId) || {};
      /** @type {RemoteTrack} */
      const remote = {
        id: trackId,
        kind: /** @type {"audio"|"video"} */ (track.kind),
        publisher: info.publisher || "",
        source: info.source || "",
        name: info.name || "",
        mid,
        track,
        stream: new MediaStream([track]),
        receiver: transceiver.receiver,
      };
      this.remoteTracks.set(trackId, remote);
      this._mark("firstTrack");
      this._emit("trackSubscribed", remote);
    }
  }

  /**
   * Receive these tracks (only needed with `autoSubscribe: false`).
   * @param {string[]} trackIds
   * @returns {Promise<void>}
   */
  async subscribe(trackIds) {
    await this._request({ type: "subscribe", track_ids: trackIds });
  }

  /**
   * Stop receiving these tracks (their m-lines go inactive and are reused later).
   * @param {string[]} trackIds
   * @returns {Promise<void>}
   */
  async unsubscribe(trackIds) {
    await this._request({ type: "unsubscribe", track_ids: trackIds });
  }

  /**
   * Say which quality of a remote video track we want.
   *
   * Sends `{type: "quality", track_id, quality, max_width, max_height}`: the SFU never sends a
   * layer above the wish, and below it follows this connection's bandwidth estimate ("auto":
   * the estimate alone). The preference is also kept in {@link Room#qualityPreferences}.
   * @param {string} trackId
   * @param {QualityPreference} preference
   */
  setQuality(trackId, preference) {
    const pref = { quality: "auto", ...preference };
    this.qualityPreferences.set(trackId, pref);
    if (!this.options.sendQualityMessages || this.state !== "connected") return;
    const message = { type: "quality", track_id: trackId, quality: pref.quality };
    if (pref.maxWidth) message.max_width = pref.maxWidth;
    if (pref.maxHeight) message.max_height = pref.maxHeight;
    this._send(message);
  }

  // -- publishing (we offer) ------------------------------------------------------------------------

  /**
   * Publish the camera.
   * @param {Object} [options]
   * @param {boolean} [options.simulcast=true] send three layers (rids q/h/f), so each viewer
   *   gets the one its link carries
   * @param {MediaTrackConstraints} [options.video] getUserMedia constraints
   * @returns {Promise<LocalTrack>}
   */
  async publishCamera(options = {}) {
    const constraints = options.video || { width: { ideal: 1280 }, height: { ideal: 720 } };
    const media = await navigator.mediaDevices.getUserMedia({ video: constraints });
    const track = media.getVideoTracks()[0];
    this._ownedTracks.add(track);
    const [published] = await this._publishTracks([
      { track, stream: media, source: "camera", simulcast: options.simulcast !== false },
    ]);
    return published;
  }

  /**
   * Publish the microphone.
   * @param {Object} [options]
   * @param {MediaTrackConstraints|boolean} [options.audio=true] getUserMedia constraints
   * @returns {Promise<LocalTrack>}
   */
  async publishMicrophone(options = {}) {
    const media = await navigator.mediaDevices.getUserMedia({ audio: options.audio ?? true });
    const track = media.getAudioTracks()[0];
    this._ownedTracks.add(track);
    const [published] = await this._publishTracks([{ track, stream: media, source: "microphone" }]);
    return published;
  }

  /**
   * Publish every track of a stream you already have (e.g. a preview) in one negotiation.
   * The stream's tracks stay yours: disconnect() does not stop them.
   * @param {MediaStream} stream
   * @param {Object} [options]
   * @param {boolean} [options.simulcast=false] simulcast for the video track (see publishCamera)
   * @param {string} [options.videoSource="camera"] e.g. "screen"
   * @param {string} [options.audioSource="microphone"]
   * @returns {Promise<LocalTrack[]>}
   */
  async publish(stream, options = {}) {
    return this._publishTracks(publishItems({ ...options, stream }));
  }

  /**
   * Stop publishing a track (others get `trackUnpublished`).
   * @param {LocalTrack} localTrack
   * @returns {Promise<void>}
   */
  async unpublish(localTrack) {
    this.localTracks.delete(localTrack.id);
    await localTrack.sender.replaceTrack(null);
    // The next publish offer must not carry this m-line as sending, or it becomes a new track.
    const transceiver = this.publisherPc
      ? this.publisherPc.getTransceivers().find((t) => t.sender === localTrack.sender)
      : null;
    if (transceiver) transceiver.direction = "inactive";
    if (this._ownedTracks.delete(localTrack.track)) localTrack.track.stop();
    await this._request({ type: "unpublish", track_id: localTrack.id });
  }

  /** One publish negotiation at a time: later calls wait for earlier ones. */
  _publishTracks(items) {
    const run = this._publishing.then(() => this._negotiatePublish(items));
    this._publishing = run.catch(() => {});
    return run;
  }

  async _negotiatePublish(items) {
    if (this.state !== "connected") throw new SfuError("closed", "not connected");
    if (!this.grants.publish) throw new SfuError("forbidden", "token lacks the 'publish' grant");
    const prepared = await this._preparePublish(items);
    const reply = await this._request({
      type: "publish",
      sdp: prepared.sdp,
      tracks: prepared.tracks,
    });
    return this._applyPublishAnswer(prepared, reply);
  }

  /** Add the tracks to the publisher connection and make the offer (with its candidates). */
  async _preparePublish(items) {
    if (!this.publisherPc) this.publisherPc = this._createPc();
    const pc = this.publisherPc;
    const added = items.map((item) => {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: "sendonly", streams: [item.stream] };
      if (item.simulcast) init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
      const transceiver = pc.addTransceiver(item.track, init);
      if (item.track.kind === "video") preferVp8(transceiver);
      return { item, transceiver };
    });
    await pc.setLocalDescription(await pc.createOffer());
    if (this.options.waitForIceGathering) await iceGatheringComplete(pc);
    return {
      pc,
      added,
      get sdp() {
        return pc.localDescription.sdp; // read when sent: the candidates gathered by then
      },
      tracks: added.map(({ item, transceiver }) => ({
        mid: transceiver.mid,
        kind: item.track.kind,
        source: item.source,
      })),
    };
  }

  /** The SFU's answer ({sdp, tracks}) to a prepared offer: the LocalTracks it accepted. */
  async _applyPublishAnswer(prepared, reply) {
    const { pc, added } = prepared;
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    this._mark("publishAnswered");
    const byMid = new Map((reply.tracks || []).map((t) => [t.mid, t]));
    const result = [];
    for (const { item, transceiver } of added) {
      const info = byMid.get(transceiver.mid);
      if (!info) continue;
      /** @type {LocalTrack} */
      const local = {
        id: info.id,
        kind: /** @type {"audio"|"video"} */ (item.track.kind),
        source: item.source,
        mid: transceiver.mid,
        track: item.track,
        sender: transceiver.sender,
        stream: item.stream,
        simulcast: !!item.simulcast,
      };
      this.localTracks.set(local.id, local);
      result.push(local);
      this._emit("localTrackPublished", local);
    }
    return result;
  }

  // -- data -------------------------------------------------------------------------------------------

  /**
   * Send a data message through the SFU (over the signalling WebSocket, reliable and ordered).
   * @param {any} payload anything JSON can carry
   * @param {Object} [options]
   * @param {string} [options.topic] up to 64 characters, e.g. "chat"
   * @param {string[]} [options.to] identities to send to (default: everyone else in the room)
   */
  sendData(payload, options = {}) {
    const message = { type: "data", payload };
    if (options.topic) message.topic = options.topic;
    if (options.to) message.to = options.to;
    this._send(message);
  }

  // -- live captions ------------------------------------------------------------------------------

  /**
   * Receive live captions in `lang` (e.g. "pt"; null stops them) as `caption` events.
   * Tells every captioner in the room (participants whose metadata has role "captioner"), now
   * and whenever one joins later. A language with no offline translation model arrives in the
   * host's language, marked `untranslated`.
   * @param {string|null} lang
   */
  setCaptionLanguage(lang) {
    this.captionLanguage = lang || null;
    if (this.state === "connected") this._askForCaptions(this._captioners());
  }

  _captioners() {
    return [...this.participants.values()].filter(isCaptioner).map((p) => p.identity);
  }

  _askForCaptions(identities) {
    if (!identities.length) return;
    this.sendData({ lang: this.captionLanguage }, { topic: CAPTIONS_SUBSCRIBE_TOPIC, to: identities });
  }

  // -- stats and leaving ---------------------------------------------------------------------------------

  /**
   * WebRTC statistics of both connections.
   * @returns {Promise<{publisher: RTCStatsReport|null, subscriber: RTCStatsReport|null}>}
   */
  async getStats() {
    return {
      publisher: this.publisherPc ? await this.publisherPc.getStats() : null,
      subscriber: this.subscriberPc ? await this.subscriberPc.getStats() : null,
    };
  }

  /**
   * Leave the room: tell the SFU, close both connections, stop the tracks the SDK opened.
   * @returns {Promise<void>}
   */
  async disconnect() {
    if (this.state === "disconnected") return;
    this._leaving = true; // (the socket closing now is no failure)
    this._resuming = false; // (a resume under way stops)
    if (this._ws && this._ws.readyState === WebSocket.OPEN && (this._attached || !this._session)) {
      try {
        await this._request({ type: "leave" }, 2000);
      } catch {
        // leaving anyway
      }
    } else if (this._session) {
      this._leaveOverHttp(); // HTTP join, socket not attached yet
    }
    this._teardown("disconnected");
  }

  _leaveOverHttp() {
    const session = this._session;
    if (!session || this._leftOverHttp) return;
    this._leftOverHttp = true;
    this._post("leave", { session }, 5000, { keepalive: true }).catch(() => {});
  }

  _teardown(state) {
    if (this.state === "disconnected") return;
    if (this._resuming) {
      this._dropConnection(); // a failed attempt of a resume: the resume goes on
      return;
    }
    if (this._watchTimer) clearInterval(this._watchTimer);
    this._watchTimer = null;
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) this._ws.close();
    for (const pc of [this.publisherPc, this.subscriberPc]) if (pc) pc.close();
    for (const track of this._ownedTracks) track.stop();
    this._ownedTracks.clear();
    const remotes = [...this.remoteTracks.values()];
    this.remoteTracks.clear();
    this.localTracks.clear();
    this._setState(state);
    for (const remote of remotes) this._emit("trackUnsubscribed", remote);
  }
}

/** The tracks of a stream to publish, with their sources and simulcast choice. */
function publishItems(options) {
  const { stream, simulcast, videoSource, audioSource } =
    options instanceof MediaStream ? { stream: options } : options;
  return stream.getTracks().map((track) => ({
    track,
    stream,
    source: track.kind === "video" ? videoSource || "camera" : audioSource || "microphone",
    simulcast: track.kind === "video" && !!simulcast,
  }));
}

function isCaptioner(participant) {
  return !!participant && (participant.metadata || {}).role === "captioner";
}

function isCaption(msg) {
  const p = msg.payload;
  return (
    typeof msg.topic === "string" &&
    msg.topic.startsWith(CAPTIONS_TOPIC_PREFIX) &&
    msg.topic !== CAPTIONS_SUBSCRIBE_TOPIC &&
    !!p &&
    typeof p === "object" &&
    typeof p.text === "string"
  );
}

/** @returns {Caption} */
function toCaption(msg) {
  const p = msg.payload;
  return {
    id: String(p.id || ""),
    final: !!p.final,
    text: p.text,
    lang: p.lang || msg.topic.slice(CAPTIONS_TOPIC_PREFIX.length),
    sourceLang: p.source_lang || "",
    sourceText: p.source_text,
    untranslated: !!p.untranslated,
    speaker: p.speaker || "",
    from: msg.from,
    start: p.start,
    end: p.end,
  };
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new SfuError("timeout", `no answer to '${what}'`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function errorText(err) {
  return String(err && err.message ? err.message : err);
}

function toSfuError(err, code) {
  return err instanceof SfuError ? err : new SfuError(code, String(err && err.message ? err.message : err));
}
