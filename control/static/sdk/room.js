// Room client for the SFU's WebSocket signaling, protocol version 1 (docs/signaling.md).
// Plain ES module: no build step, no dependencies. How to use it: docs/sdk.md.
//
// Two RTCPeerConnections: the publisher connection sends my microphone and camera, the
// subscriber connection receives everyone else. The client makes every offer on both; the
// server answers, and asks for more receiving sections with `renegotiate`.

const PROTOCOL_VERSION = 1;

// Simulcast layers, lowest first (rid q/h/f as the server expects), as on the demo page.
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

const SOURCES = { audio: 'microphone', video: 'camera' };

const PING_INTERVAL_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
const OPEN_TIMEOUT_MS = 10_000;
const LEAVE_TIMEOUT_MS = 2_000;
const ICE_GATHER_TIMEOUT_MS = 3_000;
// Chrome may stay `disconnected` for good instead of reaching `failed`: restart ICE then too.
const ICE_DISCONNECTED_RESTART_MS = 15_000;
const BACKOFF_FIRST_MS = 500;
// A hybrid room's switch: how long the new path may take to come up before the old one is
// dropped anyway (the server removes a participant that has not acknowledged within
// hybrid.ack_timeout_secs, 10 s by default).
const SWITCH_READY_TIMEOUT_MS = 7_000;
const BACKOFF_MAX_MS = 5_000;

// Close codes after which reconnecting cannot help: left, unsupported version, unauthorized,
// replaced by another socket of the same identity, forbidden or room full.
const FINAL_CLOSE_CODES = new Set([1000, 4000, 4001, 4002, 4003]);
// Join errors that a new attempt would only repeat, with the close code that comes with them.
const FINAL_JOIN_ERRORS = new Map([
  ['unsupported_version', 4000], ['unauthorized', 4001], ['replaced', 4002], ['forbidden', 4003], ['room_full', 4003],
]);

// The server message that answers each client message (any of them may get `error` instead).
// A message settles a pending request only if it is that answer or an error: a broadcast
// that happens to carry a `req` cannot resolve the wrong request.
const REPLIES = {
  join: 'joined',
  publish: 'publish_answer',
  subscriber_offer: 'subscriber_answer',
  subscribe: 'subscribed',
  unsubscribe: 'unsubscribed',
  set_subscription: 'subscription',
  mute: 'track_muted',
  leave: 'left',
  ping: 'pong',
  floor_request: ['floor_granted', 'floor_queued', 'floor_denied'],
};

/** An error from the server (`code` as in docs/signaling.md) or from the client itself
 * (`disconnected`, `timeout`, `not_published`, `bad_state`). */
export class RoomError extends Error {
  constructor(code, message, { req, closeCode } = {}) {
    super(message);
    this.name = 'RoomError';
    this.code = code;
    if (req !== undefined) this.req = req;
    if (closeCode !== undefined) this.closeCode = closeCode;
  }
}

// A promise with its resolve/reject outside, and whether it is settled.
function deferred() {
  const d = { settled: false };
  d.promise = new Promise((resolve, reject) => {
    d.resolve = (v) => { d.settled = true; resolve(v); };
    d.reject = (e) => { d.settled = true; reject(e); };
  });
  d.promise.catch(() => {}); // a rejection nobody waits for is not an unhandled one
  return d;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The server does no trickle ICE: the offer must carry the candidates. Wait for gathering to
// complete, but no longer than ICE_GATHER_TIMEOUT_MS (then send what there is). Resolves to
// whether gathering completed. Also used by the WHIP/WHEP demo page (/app.js).
export function waitIceGathering(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve(complete);
    };
    const onChange = () => { if (pc.iceGatheringState === 'complete') done(true); };
    const onCandidate = (ev) => { if (!ev.candidate) done(true); };
    const timer = setTimeout(() => done(false), ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', onChange);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function participantFrom(p) {
  return {
    identity: p.identity,
    name: p.name || p.identity,
    tracks: new Map((p.tracks || []).map((t) => [t.id, t])),
    quality: p.quality || null, // excellent | good | poor | lost, null until the server knows
  };
}

export class Room extends EventTarget {
  /** Join a room: resolves with the Room once the server said `joined`. */
  static async join(options) {
    const room = new Room(options);
    await room.connect();
    return room;
  }

  /** Publisher connection (null until something is published). */
  pcPublisher = null;
  /** Subscriber connection (opened on joining; it also carries the data channels). */
  pcSubscriber = null;
  /** Me: {identity, name, tracks: Map id → Track, quality} (my published tracks as the server
   * sees them; my connection quality). */
  me = null;
  /** Everyone else: Map identity → {identity, name, tracks: Map id → Track, quality}. */
  participants = new Map();
  /** The room's options from `joined`: {ptt: true} for a push-to-talk channel. */
  settings = {};
  /** Push to talk: {holder: identity | null, queue: [identity]}, null outside a channel. */
  floor = null;
  /** How media travels: 'sfu', or 'p2p' (a hybrid room while small: a peer connection to each
   * other participant, `meshConnections`). */
  mode = 'sfu';
  /** Hybrid room, peer to peer: Map identity → RTCPeerConnection with that participant. */
  meshConnections = new Map();

  #opts;
  #wsUrl;
  #state = 'new'; // new | connecting | joined | reconnecting | leaving | closed
  #ws = null;
  #ready = deferred(); // resolved while joined: negotiations wait on it
  #pending = new Map(); // req → {type, resolve, reject, timer}
  #nextReq = 1;
  #pingTimer = null;
  #resume = null; // {token, secs} from the last `joined`
  #iceServers = [];
  #local = new Map(); // kind → {kind, track, stream, source, simulcast, muted, transceiver, trackId}
  #subs = new Map(); // track id → subscription (see #onSubscribed)
  #wanted = { audio: 0, video: 0 }; // receiving sections the server asked for
  #channels = { reliable: null, lossy: null }; // data channels on the subscriber connection
  #epoch = 0; // the hybrid switch that brought `mode`
  #switching = null; // {to, epoch} while a switch is under way
  #prewarm = false; // hybrid room, peer to peer: publish to the SFU ahead of a move
  #mesh = new Map(); // identity → {pc, channel, tracks: Map kind → sub-like entry}
  #deafened = { all: false, some: new Set() }; // selective listening: whose audio I do not want
  #negotiations = {
    publisher: { chain: Promise.resolve(), queued: null, iceRestart: false },
    subscriber: { chain: Promise.resolve(), queued: null, iceRestart: false },
  };

  /**
   * @param {object} options
   * @param {string} [options.url] base http(s) URL of control (default: this page's origin)
   * @param {string} options.room room name
   * @param {string} options.token access token (subscribe grant; publish grant to publish)
   * @param {string} [options.name] display name
   * @param {boolean} [options.autoSubscribe=true] receive every track of everyone
   * @param {RTCIceServer[]} [options.iceServers] instead of the server's `ice_servers`
   */
  constructor({ url = globalThis.location?.origin, room, token, name, autoSubscribe = true, iceServers } = {}) {
    super();
    if (!url || !room || !token) throw new TypeError('Room: url, room and token are required');
    const base = new URL(url);
    base.protocol = base.protocol === 'https:' || base.protocol === 'wss:' ? 'wss:' : 'ws:';
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    this.#wsUrl = new URL(`rtc/${encodeURIComponent(room)}`, base).href;
    this.#opts = { token, name, autoSubscribe, iceServers };
  }

  /** new | connecting | joined | reconnecting | leaving | closed */
  get state() { return this.#state; }

  /** Map track id → {trackId, mid, kind, participant, mediaStreamTrack, transceiver, maxLayer,
   * paused}: the remote tracks that arrive (participant and the rest are null until the `track`
   * event). Read only. */
  get subscriptions() { return this.#subs; }

  /** Map kind → {kind, track, source, muted, trackId, ...}: what I publish. Read only. */
  get localTracks() { return this.#local; }

  /** Open the socket and join. Attach listeners before calling it to get `participantjoined`
   * for those already in the room; `Room.join()` does both steps at once. */
  async connect() {
    if (this.#state !== 'new') throw new RoomError('bad_state', 'connect() may be called once');
    this.#state = 'connecting';
    try {
      await this.#join();
    } catch (e) {
      this.#state = 'closed';
      throw e;
    }
    return this;
  }

  /** Leave the room: the server ends my sessions at once. */
  async leave() {
    if (this.#state === 'closed') return;
    // Sent while still `joined` (only join may go out otherwise); the socket closes after `left`.
    const left = this.#request({ type: 'leave' }, LEAVE_TIMEOUT_MS).catch(() => {});
    this.#state = 'leaving';
    this.#ready = deferred(); // queued negotiations wait, then fail at #shutdown
    await left;
    this.#shutdown(1000, 'left');
  }

  /**
   * Publish the first audio and the first video track of `stream` (microphone and camera);
   * video with 3 simulcast layers unless `simulcast` is false. A kind already published has
   * its track replaced without renegotiation. A track that is disabled (`enabled = false`)
   * is published muted.
   */
  async publish(stream, { simulcast = true } = {}) {
    this.#assertInRoom();
    const added = [];
    for (const track of [stream.getAudioTracks()[0], stream.getVideoTracks()[0]]) {
      if (!track) continue;
      const existing = this.#local.get(track.kind);
      if (existing) {
        track.enabled = !existing.muted;
        existing.track = track;
        if (existing.transceiver?.direction !== 'inactive') await existing.transceiver?.sender.replaceTrack(track);
        continue;
      }
      const entry = {
        kind: track.kind, track, stream, source: SOURCES[track.kind],
        simulcast: simulcast && track.kind === 'video', muted: !track.enabled, transceiver: null, trackId: null,
      };
      this.#local.set(track.kind, entry);
      added.push(entry);
    }
    this.#talking(this.holdsFloor);
    await this.#meshSendLocal();
    // Peer to peer, the SFU gets my media only ahead of a move (prewarm).
    if (!added.length || !this.#sendsToSfu()) return;
    for (const entry of added) await this.#attach(entry);
    try {
      await this.#renegotiate('publisher');
    } catch (e) {
      for (const entry of added) await this.#detach(entry); // the offer was rolled back
      throw e;
    }
  }

  /** Stop publishing a kind ('audio' or 'video'). The track itself is not stopped: it is yours. */
  async unpublish(kind) {
    const entry = this.#local.get(kind);
    if (!entry) return;
    await this.#detach(entry);
    await this.#renegotiate('publisher');
  }

  /** Mute or unmute what I publish of a kind: stops sending (`track.enabled`) and tells the
   * room (`mute` → `track_muted` to everyone). */
  async setMuted(kind, muted) {
    const entry = this.#local.get(kind);
    if (!entry) throw new RoomError('not_published', `no ${kind} track is published`);
    entry.muted = muted;
    entry.track.enabled = !muted;
    if (kind === 'audio') this.#talking(this.holdsFloor);
    // Without a server track id (publish under way) or while reconnecting, the next
    // publish_answer / joined shows the server's state and #syncMyTracks sends the change.
    if (entry.trackId && this.#state === 'joined') await this.#sendMute(entry);
  }

  /** Receive a track (needed with autoSubscribe: false). Resolves with its subscription once a
   * section carries it; the `track` event follows as soon as the track's owner is known. */
  async subscribe(trackId, { maxLayer } = {}) {
    await this.#request({ type: 'subscribe', track: trackId, max_layer: maxLayer });
    return this.#subs.get(trackId);
  }

  /** Stop receiving a track (`trackended` follows, reason `requested`). */
  async unsubscribe(trackId) {
    await this.#request({ type: 'unsubscribe', track: trackId });
  }

  /** Cap the simulcast layer (0-2) of a received track, or pause/resume it. Does nothing when
   * the subscription already has these values, so it may be called on every resize. */
  async setSubscription(trackId, { maxLayer, paused } = {}) {
    const sub = this.#subs.get(trackId);
    if (sub && (maxLayer ?? sub.maxLayer) === sub.maxLayer && (paused ?? sub.paused) === sub.paused) return;
    // Recorded at once, so that repeated calls while the answer is on its way send nothing.
    const before = sub && { maxLayer: sub.maxLayer, paused: sub.paused };
    if (sub) Object.assign(sub, { maxLayer: maxLayer ?? sub.maxLayer, paused: paused ?? sub.paused });
    try {
      await this.#request({ type: 'set_subscription', track: trackId, max_layer: maxLayer, paused });
    } catch (e) {
      if (sub && this.#subs.get(trackId) === sub) Object.assign(sub, before);
      throw e;
    }
  }

  /**
   * Send a data message to everyone else in the room, or to one participant (`to`: identity).
   * `data` is any JSON value; the server caps its size and rate (`error` events say what was
   * dropped). `reliable: false` sends it unordered without retransmission. Receivers get a
   * `message` event {from, to, data, reliable}.
   */
  send(data, { to, reliable = true } = {}) {
    this.#assertInRoom();
    if (this.mode === 'p2p') {
      // Peer to peer: straight to each peer over the mesh's data channel (reliable, ordered).
      const text = JSON.stringify(to ? { to, data } : { data });
      const peers = to ? [this.#mesh.get(to)].filter(Boolean) : [...this.#mesh.values()];
      if (!peers.length || peers.some((p) => p.channel.readyState !== 'open')) {
        throw new RoomError('not_connected', 'a peer connection is not open yet');
      }
      for (const peer of peers) peer.channel.send(text);
      return;
    }
    const channel = (reliable ? this.#channels.reliable : this.#channels.lossy) || this.#channels.reliable;
    if (!channel || channel.readyState !== 'open') {
      throw new RoomError('not_connected', 'the data channel is not open yet');
    }
    channel.send(JSON.stringify(to ? { to, data } : { data }));
  }

  /**
   * Push to talk: ask for the floor. Resolves with {granted: true, maxTalkMs} (the microphone
   * is live until the turn ends) or {granted: false, position} (waiting; a `floor` event with
   * me as holder comes when it is my turn); rejects with a RoomError whose code is the reason
   * (`queue_full`, `not_push_to_talk`, `no_publish_grant`).
   */
  async requestFloor() {
    const answer = await this.#request({ type: 'floor_request' });
    if (answer.type === 'floor_denied') throw new RoomError(answer.reason, `floor denied: ${answer.reason}`);
    if (answer.type === 'floor_granted') return { granted: true, maxTalkMs: answer.max_talk_ms };
    return { granted: false, position: answer.position };
  }

  /** Push to talk: let go of the floor (or of my place in line). The microphone goes silent at
   * once. */
  releaseFloor() {
    this.#assertInRoom();
    this.#talking(false);
    this.#ws?.send(JSON.stringify({ type: 'floor_release' }));
  }

  /**
   * Selective listening: stop receiving a speaker's audio (`identity`), or everyone's (no
   * identity); `deafened = false` undoes it. Through the SFU the node stops sending it
   * (`set_subscription` paused), so the bandwidth is saved; peer to peer the audio is only
   * silenced here. Applies to audio arriving later too, until undone.
   */
  async deafen(identity = null, deafened = true) {
    if (identity == null) {
      this.#deafened.all = deafened;
      if (!deafened) this.#deafened.some.clear();
    } else if (deafened) {
      this.#deafened.some.add(identity);
    } else {
      this.#deafened.some.delete(identity);
    }
    await this.#applyDeafness();
  }

  /** Whether I do not listen to `identity`'s audio (selective listening). */
  isDeafenedTo(identity) {
    return this.#deafened.all || this.#deafened.some.has(identity);
  }

  async #applyDeafness() {
    const pending = [];
    for (const sub of this.#subs.values()) {
      if (sub.kind !== 'audio' || !sub.participant) continue;
      const paused = this.isDeafenedTo(sub.participant.identity);
      if (sub.paused !== paused) pending.push(this.setSubscription(sub.trackId, { paused }));
    }
    for (const peer of this.#mesh.values()) {
      const audio = peer.tracks.get('audio');
      if (audio) audio.mediaStreamTrack.enabled = !this.isDeafenedTo(peer.identity);
    }
    await Promise.all(pending);
  }

  /** Push to talk: whether I hold the floor. */
  get holdsFloor() { return !!this.floor && this.floor.holder === this.me?.identity; }

  // ---------- socket and requests ----------

  // Open a socket and send `join` (resuming with `resumeToken`); resolves with `joined`, which
  // #onJoined has applied by then.
  async #join(resumeToken) {
    const ws = await this.#open();
    const { token, name, autoSubscribe } = this.#opts;
    try {
      return await this.#request({
        type: 'join', v: PROTOCOL_VERSION, token, name, auto_subscribe: autoSubscribe, resume: resumeToken,
      });
    } catch (e) {
      this.#dropSocket(ws, e);
      throw e;
    }
  }

  #open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.#wsUrl);
      const fail = (why) => {
        clearTimeout(timer);
        ws.onopen = ws.onclose = ws.onerror = null;
        ws.close();
        reject(new RoomError('disconnected', `cannot open ${this.#wsUrl}: ${why}`));
      };
      const timer = setTimeout(() => fail('timed out'), OPEN_TIMEOUT_MS);
      ws.onerror = () => fail('connection error');
      ws.onclose = (ev) => fail(`closed (${ev.code})`);
      ws.onopen = () => {
        if (this.#state === 'closed') { fail('the room was left'); return; }
        clearTimeout(timer);
        this.#ws = ws;
        ws.onmessage = (ev) => this.#onMessage(ws, ev);
        ws.onclose = (ev) => this.#onSocketClosed(ws, ev.code, ev.reason);
        ws.onerror = null; // a close event always follows an error
        resolve(ws);
      };
    });
  }

  // Send a message with a fresh `req`; resolves with its answer, rejects with the `error`
  // carrying that `req`, on timeout, or when the socket goes away first.
  #request(msg, timeoutMs = REQUEST_TIMEOUT_MS) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || (msg.type !== 'join' && this.#state !== 'joined')) {
      return Promise.reject(new RoomError('disconnected', `cannot send ${msg.type}: not in the room`));
    }
    const req = this.#nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(req);
        reject(new RoomError('timeout', `no answer to ${msg.type} within ${timeoutMs / 1000} s`, { req }));
      }, timeoutMs);
      this.#pending.set(req, { type: msg.type, resolve, reject, timer });
      ws.send(JSON.stringify({ ...msg, req })); // undefined fields are left out
    });
  }

  #onMessage(ws, ev) {
    if (ws !== this.#ws) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (!msg || typeof msg.type !== 'string') return;
    const pending = msg.req != null ? this.#pending.get(msg.req) : undefined;
    const isReply = pending !== undefined
      && (msg.type === 'error' || [].concat(REPLIES[pending.type]).includes(msg.type));
    // Settling first is safe: the awaiting code runs only after this handler has applied the message.
    if (isReply) {
      this.#pending.delete(msg.req);
      clearTimeout(pending.timer);
      if (msg.type === 'error') pending.reject(new RoomError(msg.code, msg.message, { req: msg.req }));
      else pending.resolve(msg);
    }
    this.#handle(msg, isReply);
  }

  // Apply one server message. Everything here is synchronous, so messages apply in the order
  // they arrived even though answers are used by async code.
  #handle(msg, isReply) {
    switch (msg.type) {
      case 'joined': this.#onJoined(msg); break;
      case 'publish_answer': this.#syncMyTracks(msg.tracks); break;
      case 'subscriber_answer': this.#applySlots(msg.slots); break;
      case 'renegotiate':
        this.#wanted = {
          audio: Math.max(this.#wanted.audio, msg.audio || 0),
          video: Math.max(this.#wanted.video, msg.video || 0),
        };
        this.#renegotiate('subscriber').catch(this.#backgroundError);
        break;
      case 'subscribed': this.#onSubscribed(msg.track, msg.mid, msg.max_layer, msg.paused); break;
      case 'unsubscribed': {
        const sub = this.#subs.get(msg.track);
        if (sub) this.#endSubscription(sub, msg.reason || 'requested');
        break;
      }
      case 'subscription': {
        const sub = this.#subs.get(msg.track);
        if (sub) Object.assign(sub, { maxLayer: msg.max_layer, paused: msg.paused });
        break;
      }
      case 'participant_joined': this.#addParticipant(msg.participant); break;
      case 'participant_left': this.#removeParticipant(msg.identity, msg.reason); break;
      case 'track_published': this.#addTrack(msg.track); break;
      case 'track_unpublished': this.#removeTrack(msg.track, msg.identity); break;
      case 'track_muted': this.#setTrackMuted(msg.track, msg.identity, msg.muted); break;
      // Not in protocol version 1 yet: the server's active speakers, loudest first.
      case 'speakers': this.#emit('speakers', { speakers: msg.speakers || [] }); break;
      // Not in protocol version 1 yet either: connection quality, mine included.
      case 'quality':
        for (const q of msg.participants || []) this.#setQuality(q.identity, q.quality);
        break;
      case 'mode':
        this.#prewarm = !!msg.prewarm;
        this.#settleMode(msg.mode, msg.epoch);
        break;
      case 'switch': this.#onSwitch(msg.to, msg.epoch).catch(this.#backgroundError); break;
      case 'prewarm':
        this.#prewarm = !!msg.on;
        this.#followPrewarm().catch(this.#backgroundError);
        break;
      case 'p2p_signal': this.#onP2pSignal(msg.from, msg.data).catch(this.#backgroundError); break;
      case 'floor':
        this.floor = msg.ptt ? { holder: msg.holder ?? null, queue: msg.queue || [] } : null;
        this.#talking(this.holdsFloor);
        this.#emit('floor', { ptt: !!msg.ptt, holder: msg.holder ?? null, queue: msg.queue || [] });
        break;
      case 'floor_granted':
        this.#talking(true);
        this.#emit('floorgranted', { maxTalkMs: msg.max_talk_ms });
        break;
      case 'floor_revoked':
        this.#talking(false);
        this.#emit('floorrevoked', { reason: msg.reason });
        break;
      case 'error':
        if (!isReply) this.#emit('error', { code: msg.code, message: msg.message, req: msg.req });
        break;
      default: break; // pong, left, and whatever a newer server adds
    }
  }

  // Forget a socket: no more events from it, and the requests sent on it fail with `err`.
  #dropSocket(ws, err) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close();
    if (ws !== this.#ws) return;
    this.#ws = null;
    clearInterval(this.#pingTimer);
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
  }

  // The socket closed (or stopped answering pings). While joined: reconnect, unless the code
  // says it is final. While (re)connecting, the pending join fails and its caller decides.
  #onSocketClosed(ws, code, reason) {
    if (ws !== this.#ws) return;
    const err = new RoomError('disconnected', `signaling socket closed (${code}${reason ? `: ${reason}` : ''})`,
      { closeCode: code });
    this.#dropSocket(ws, err);
    if (this.#state !== 'joined') return;
    if (FINAL_CLOSE_CODES.has(code)) {
      this.#shutdown(code, reason, err);
      return;
    }
    this.#state = 'reconnecting';
    this.#ready = deferred();
    this.#emit('disconnected', { code, reason, willReconnect: true });
    this.#reconnect();
  }

  // Reconnect with exponential backoff; resume while the resume window lasts, else join afresh.
  async #reconnect() {
    const droppedAt = Date.now();
    let delay = BACKOFF_FIRST_MS;
    while (this.#state === 'reconnecting') {
      await sleep(delay);
      if (this.#state !== 'reconnecting') return;
      const resume = this.#resume && Date.now() - droppedAt < this.#resume.secs * 1000 ? this.#resume.token : undefined;
      try {
        await this.#join(resume);
        return; // #onJoined did the rest
      } catch (e) {
        if (this.#state !== 'reconnecting') return; // left meanwhile
        if (e.code === 'resume_failed') {
          this.#resume = null;
          delay = 0; // join afresh at once
          continue;
        }
        if (FINAL_JOIN_ERRORS.has(e.code) || FINAL_CLOSE_CODES.has(e.closeCode)) {
          this.#shutdown(e.closeCode ?? FINAL_JOIN_ERRORS.get(e.code), e.message, e);
          return;
        }
        delay = Math.min(Math.max(delay * 2, BACKOFF_FIRST_MS), BACKOFF_MAX_MS);
      }
    }
  }

  #startPing() {
    clearInterval(this.#pingTimer);
    const ws = this.#ws;
    this.#pingTimer = setInterval(() => {
      this.#request({ type: 'ping' }, PING_INTERVAL_MS).catch((e) => {
        // No pong within an interval: the socket is dead even if the browser has not noticed.
        if (e.code === 'timeout') this.#onSocketClosed(ws, 1006, 'no pong');
      });
    }, PING_INTERVAL_MS);
  }

  // The end: no reconnection. Connections close; the local tracks are the caller's to stop.
  #shutdown(code, reason, error) {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    const err = error || new RoomError('disconnected', 'the room was left');
    if (this.#ws) this.#dropSocket(this.#ws, err);
    this.#ready = deferred();
    this.#ready.reject(err);
    for (const sub of [...this.#subs.values()]) this.#endSubscription(sub, 'closed');
    this.pcPublisher?.close();
    this.pcSubscriber?.close();
    this.pcPublisher = this.pcSubscriber = null;
    for (const identity of [...this.#mesh.keys()]) this.#meshClose(identity, 'closed');
    this.#emit('disconnected', { code, reason, willReconnect: false });
  }

  // ---------- room model ----------

  #onJoined(msg) {
    const first = this.me === null;
    this.settings = msg.settings || {};
    if (!this.settings.ptt) this.floor = null;
    const fresh = !first && !msg.resumed; // the resume failed: the server forgot our sessions
    if (fresh) this.#resetMedia();
    this.#resume = msg.resume || null;
    this.#iceServers = this.#opts.iceServers || msg.ice_servers || [];
    this.#state = 'joined';
    this.#ready.resolve();
    this.#startPing();
    if (!this.#switching) {
      this.mode = msg.mode === 'p2p' ? 'p2p' : 'sfu';
      this.#epoch = msg.epoch ?? 0;
    }
    this.#syncRoom(msg);
    if (this.mode === 'p2p') {
      this.#meshAll();
    } else {
      if (fresh) this.#republish().catch(this.#backgroundError);
      // The subscriber connection opens at once: it carries the data channels. After a
      // resume, events in between are lost: a new subscriber offer's answer (its slots) says
      // what each section carries now.
      if (!this.pcSubscriber || msg.resumed) this.#renegotiate('subscriber').catch(this.#backgroundError);
    }
    if (!first) this.#emit('reconnected', { resumed: !!msg.resumed });
  }

  // Bring the model in line with a `joined`, with the events that tell the difference (on the
  // first join: `participantjoined` for each one already there).
  #syncRoom(msg) {
    if (this.me) {
      this.me.name = msg.me.name || this.me.name;
      this.#setQuality(this.me.identity, msg.me.quality);
    } else {
      this.me = participantFrom(msg.me);
    }
    this.#syncMyTracks(msg.me.tracks);
    const now = new Map((msg.participants || []).map((p) => [p.identity, p]));
    for (const identity of [...this.participants.keys()]) {
      if (!now.has(identity)) this.#removeParticipant(identity, 'resync');
    }
    for (const p of now.values()) {
      const known = this.participants.get(p.identity);
      if (!known) {
        this.#addParticipant(p);
        continue;
      }
      known.name = p.name || known.name;
      this.#setQuality(p.identity, p.quality);
      const tracks = new Map((p.tracks || []).map((t) => [t.id, t]));
      for (const id of [...known.tracks.keys()]) {
        if (!tracks.has(id)) this.#removeTrack(id, p.identity);
      }
      for (const t of tracks.values()) {
        const old = known.tracks.get(t.id);
        if (!old) this.#addTrack(t);
        else if (old.muted !== t.muted) this.#setTrackMuted(t.id, p.identity, t.muted);
      }
    }
  }

  // My published tracks as the server sees them (publish_answer, joined): match them with the
  // local tracks by mid, and send any mute change the server has not seen.
  #syncMyTracks(tracks = []) {
    this.me.tracks = new Map(tracks.map((t) => [t.id, t]));
    for (const entry of this.#local.values()) {
      const mid = entry.transceiver?.mid;
      const track = mid != null ? tracks.find((t) => t.mid === mid) : undefined;
      entry.trackId = track ? track.id : null;
      if (track && track.muted !== entry.muted) this.#sendMute(entry).catch(this.#backgroundError);
    }
  }

  #participant(identity) {
    return identity === this.me?.identity ? this.me : this.participants.get(identity);
  }

  #addParticipant(p) {
    if (p.identity === this.me.identity) return;
    if (this.participants.has(p.identity)) this.#removeParticipant(p.identity, 'replaced');
    const participant = participantFrom(p);
    this.participants.set(participant.identity, participant);
    this.#emit('participantjoined', { participant });
    this.#flushSubscriptions();
    if (this.mode === 'p2p' || this.#switching?.to === 'p2p') this.#meshAll();
  }

  #removeParticipant(identity, reason) {
    const participant = this.participants.get(identity);
    if (!participant) return;
    for (const sub of [...this.#subs.values()]) {
      if (participant.tracks.has(sub.trackId)) this.#endSubscription(sub, 'left');
    }
    this.#meshClose(identity, 'left');
    this.participants.delete(identity);
    this.#emit('participantleft', { participant, reason });
  }

  #addTrack(track) {
    const participant = this.#participant(track.identity);
    if (!participant) return;
    participant.tracks.set(track.id, track);
    this.#emit('trackpublished', { participant, track });
    this.#flushSubscriptions();
  }

  #removeTrack(trackId, identity) {
    const participant = this.#participant(identity);
    const track = participant?.tracks.get(trackId);
    if (!track) return;
    const sub = this.#subs.get(trackId);
    if (sub) this.#endSubscription(sub, 'unpublished');
    participant.tracks.delete(trackId);
    this.#emit('trackunpublished', { participant, track });
  }

  // A participant's (or my) connection quality; `quality` when it changed. A quality the
  // server does not give (not known yet) leaves the last one.
  #setQuality(identity, quality) {
    const participant = this.#participant(identity);
    if (!participant || !quality || participant.quality === quality) return;
    participant.quality = quality;
    this.#emit('quality', { participant, quality });
  }

  #setTrackMuted(trackId, identity, muted) {
    const participant = this.#participant(identity);
    const track = participant?.tracks.get(trackId);
    if (!track) return;
    track.muted = muted;
    this.#emit('trackmuted', { participant, track, muted });
  }

  // ---------- subscriptions ----------

  // A remote track arrives on the subscriber connection's section `mid` (from `subscribed`,
  // or a slot of `subscriber_answer`, where layer and pause are not given).
  #onSubscribed(trackId, mid, maxLayer, paused) {
    const sub = this.#subs.get(trackId);
    if (sub && sub.mid === mid) {
      Object.assign(sub, { maxLayer: maxLayer ?? sub.maxLayer, paused: paused ?? sub.paused });
      return;
    }
    if (sub) this.#endSubscription(sub, 'replaced');
    for (const other of [...this.#subs.values()]) {
      if (other.mid === mid) this.#endSubscription(other, 'replaced'); // the section was reused
    }
    this.#subs.set(trackId, {
      trackId, mid, kind: null, participant: null, mediaStreamTrack: null, transceiver: null,
      maxLayer: maxLayer ?? 2, paused: paused ?? false,
    });
    this.#flushSubscriptions();
  }

  // What each receiving section carries now. Normally `subscribed` / `unsubscribed` have said
  // it already; after a resume this is how the client learns what changed meanwhile.
  #applySlots(slots = []) {
    for (const slot of slots) {
      if (slot.track) {
        this.#onSubscribed(slot.track, slot.mid);
        continue;
      }
      const stale = [...this.#subs.values()].find((s) => s.mid === slot.mid);
      if (stale) this.#endSubscription(stale, 'resync');
    }
  }

  // Announce (`track`) each subscription whose section exists and whose owner is known.
  #flushSubscriptions() {
    const pc = this.pcSubscriber;
    if (!pc) return;
    for (const sub of this.#subs.values()) {
      if (sub.transceiver) continue;
      const transceiver = pc.getTransceivers().find((t) => t.mid === sub.mid);
      const participant = [...this.participants.values()].find((p) => p.tracks.has(sub.trackId));
      if (!transceiver || !participant) continue;
      Object.assign(sub, {
        transceiver, participant, kind: transceiver.receiver.track.kind, mediaStreamTrack: transceiver.receiver.track,
      });
      this.#emit('track', {
        participant, trackId: sub.trackId, kind: sub.kind, mediaStreamTrack: sub.mediaStreamTrack, transceiver,
      });
      if (sub.kind === 'audio' && this.isDeafenedTo(participant.identity) && !sub.paused) {
        this.setSubscription(sub.trackId, { paused: true }).catch(this.#backgroundError);
      }
    }
  }

  #endSubscription(sub, reason) {
    this.#subs.delete(sub.trackId);
    if (!sub.transceiver) return; // never announced
    this.#emit('trackended', {
      participant: sub.participant, trackId: sub.trackId, kind: sub.kind,
      mediaStreamTrack: sub.mediaStreamTrack, transceiver: sub.transceiver, reason,
    });
  }

  // ---------- media connections ----------

  #newConnection(which) {
    const pc = new RTCPeerConnection({ iceServers: this.#iceServers, bundlePolicy: 'max-bundle' });
    // ICE failed (network change): a new offer with new ICE credentials, on the same connection.
    const restart = () => {
      if (this.#state === 'closed' || (pc !== this.pcPublisher && pc !== this.pcSubscriber)) return;
      this.#renegotiate(which, { iceRestart: true }).catch(this.#backgroundError);
    };
    let disconnectedTimer = null;
    pc.addEventListener('iceconnectionstatechange', () => {
      clearTimeout(disconnectedTimer);
      if (pc.iceConnectionState === 'failed') restart();
      else if (pc.iceConnectionState === 'disconnected') disconnectedTimer = setTimeout(restart, ICE_DISCONNECTED_RESTART_MS);
    });
    return pc;
  }

  // The receiving connection, with a reliable and an unreliable data channel for messages.
  #newSubscriber() {
    const pc = this.#newConnection('subscriber');
    const open = (label, options) => {
      const channel = pc.createDataChannel(label, options);
      channel.onmessage = (ev) => {
        if (typeof ev.data !== 'string') return;
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (!msg || typeof msg.from !== 'string') return;
        this.#emit('message', { from: msg.from, to: msg.to ?? null, data: msg.data, reliable: label === 'reliable' });
      };
      return channel;
    };
    this.#channels = {
      reliable: open('reliable', { ordered: true }),
      lossy: open('lossy', { ordered: false, maxRetransmits: 0 }),
    };
    return pc;
  }

  // Give a local track a sending section: a section left inactive by unpublish() is reused
  // (sections are never removed), else a new one.
  async #attach(entry) {
    this.pcPublisher ??= this.#newConnection('publisher');
    const free = this.pcPublisher.getTransceivers()
      .find((t) => t.direction === 'inactive' && t.receiver.track.kind === entry.kind);
    if (free) {
      free.direction = 'sendonly';
      await free.sender.replaceTrack(entry.track);
      entry.transceiver = free;
    } else {
      entry.transceiver = this.pcPublisher.addTransceiver(entry.track, {
        direction: 'sendonly',
        streams: [entry.stream],
        sendEncodings: entry.simulcast ? SIMULCAST.map((e) => ({ ...e })) : undefined,
      });
    }
  }

  async #detach(entry) {
    this.#local.delete(entry.kind);
    const t = entry.transceiver;
    const pc = this.pcPublisher;
    if (!t || !pc || pc.signalingState === 'closed' || !pc.getTransceivers().includes(t)) return;
    t.direction = 'inactive';
    await t.sender.replaceTrack(null);
  }

  // Joining afresh: the server has forgotten our sessions, so the connections start anew.
  #resetMedia() {
    for (const sub of [...this.#subs.values()]) this.#endSubscription(sub, 'reconnect');
    this.pcPublisher?.close();
    this.pcSubscriber?.close();
    this.pcPublisher = this.pcSubscriber = null;
    this.#channels = { reliable: null, lossy: null };
    this.#wanted = { audio: 0, video: 0 };
    for (const entry of this.#local.values()) Object.assign(entry, { transceiver: null, trackId: null });
  }

  async #republish() {
    if (!this.#local.size) return;
    for (const entry of this.#local.values()) await this.#attach(entry);
    await this.#renegotiate('publisher');
  }

  // Queue an offer on one connection: one negotiation in flight per connection. Calls made
  // while an offer waits to start share it: it reads the connection's state when it starts.
  #renegotiate(which, { iceRestart = false } = {}) {
    const n = this.#negotiations[which];
    n.iceRestart ||= iceRestart;
    if (!n.queued) {
      n.queued = n.chain.then(() => {
        n.queued = null;
        const restart = n.iceRestart;
        n.iceRestart = false;
        return this.#offer(which, restart);
      });
      n.chain = n.queued.catch(() => {});
    }
    return n.queued;
  }

  async #offer(which, iceRestart) {
    for (;;) {
      await this.#ready.promise; // rejects once the room is closed
      const pc = which === 'publisher' ? this.pcPublisher : (this.pcSubscriber ??= this.#newSubscriber());
      if (!pc) return; // nothing published
      if (which === 'subscriber') this.#addReceivers(pc);
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
      await pc.setLocalDescription(await pc.createOffer({ iceRestart }));
      await waitIceGathering(pc);
      if (pc.signalingState === 'closed') continue; // replaced by a fresh join meanwhile
      const sdp = pc.localDescription.sdp;
      let answer;
      try {
        answer = await this.#request(which === 'publisher'
          ? { type: 'publish', sdp, tracks: this.#publishedSections() }
          : { type: 'subscriber_offer', sdp });
      } catch (e) {
        // The socket went away before the answer: offer again once back in the room (the
        // server may or may not have taken this offer; a new one settles it either way).
        if (e.code === 'disconnected' && this.#state !== 'closed') continue;
        if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
        throw e;
      }
      if (pc.signalingState !== 'have-local-offer') return; // closed meanwhile
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      return;
    }
  }

  // Add recvonly sections until there are as many of each kind as the server asked for.
  #addReceivers(pc) {
    for (const kind of ['audio', 'video']) {
      let have = pc.getTransceivers().filter((t) => t.receiver.track.kind === kind).length;
      for (; have < this.#wanted[kind]; have++) pc.addTransceiver(kind, { direction: 'recvonly' });
    }
  }

  #publishedSections() {
    return [...this.#local.values()]
      .filter((e) => e.transceiver?.mid != null)
      .map((e) => ({ mid: e.transceiver.mid, source: e.source, muted: e.muted }));
  }

  // Push to talk: in a channel, the microphone sends only while I hold the floor (and have
  // not muted it). The node drops a non-holder's audio anyway; this saves the uplink.
  #talking(on) {
    if (!this.settings.ptt) return;
    const mic = this.#local.get('audio');
    if (mic) mic.track.enabled = on && !mic.muted;
  }

  #sendMute(entry) {
    return this.#request({ type: 'mute', track: entry.trackId, muted: entry.muted });
  }


  // ---------- hybrid rooms: peer to peer, and switches (docs/hybrid.md) ----------

  // Whether my media goes to the SFU: always there, ahead of a move when prewarmed, and
  // during a switch towards it.
  #sendsToSfu() {
    return this.mode === 'sfu' || this.#prewarm || this.#switching?.to === 'sfu';
  }

  // The chair's word on the room's mode (`mode`, after `joined`).
  #settleMode(mode, epoch) {
    if (this.#switching) return; // a switch under way decides
    const before = this.mode;
    this.mode = mode === 'p2p' ? 'p2p' : 'sfu';
    this.#epoch = epoch ?? this.#epoch;
    if (this.mode === 'p2p') this.#meshAll();
    this.#followPrewarm().catch(this.#backgroundError);
    if (before !== this.mode) this.#emit('modechange', { mode: this.mode, epoch: this.#epoch });
  }

  // Prewarm on: publish to the SFU ahead; off (peer to peer): stop.
  async #followPrewarm() {
    if (this.mode !== 'p2p' || this.#switching) return;
    if (this.#prewarm) {
      // Both connections up ahead: the move then only adds subscriptions.
      await this.#publishToSfu();
      if (!this.pcSubscriber) await this.#renegotiate('subscriber');
    } else {
      await this.#unpublishFromSfu();
    }
  }

  async #publishToSfu() {
    const missing = [...this.#local.values()].filter((e) => !e.transceiver || e.transceiver.direction === 'inactive');
    if (!missing.length) return;
    for (const entry of missing) {
      if (entry.transceiver && this.pcPublisher?.getTransceivers().includes(entry.transceiver)) {
        entry.transceiver.direction = 'sendonly';
        await entry.transceiver.sender.replaceTrack(entry.track);
      } else {
        await this.#attach(entry);
      }
    }
    await this.#renegotiate('publisher');
  }

  async #unpublishFromSfu() {
    const sending = [...this.#local.values()].filter((e) => e.transceiver && e.transceiver.direction !== 'inactive');
    if (!sending.length || !this.pcPublisher) return;
    for (const entry of sending) {
      entry.transceiver.direction = 'inactive';
      await entry.transceiver.sender.replaceTrack(null);
    }
    await this.#renegotiate('publisher');
  }

  // `switch {to, epoch}`: set the new path up, drop the old one, acknowledge. A repeat of the
  // switch under way waits for it; a repeat of one done is acknowledged again (the first
  // acknowledgement may have been lost).
  async #onSwitch(to, epoch) {
    if (this.#switching?.epoch === epoch) return;
    if (this.#epoch === epoch && this.mode === to) {
      this.#sendAck(epoch);
      return;
    }
    this.#switching = { to, epoch };
    this.#emit('switching', { to, epoch });
    const started = performance.now();
    if (to === 'sfu') await this.#toSfu(epoch);
    else await this.#toP2p(epoch);
    if (this.#switching?.epoch !== epoch) return; // a newer switch took over
    this.#switching = null;
    this.mode = to;
    this.#epoch = epoch;
    this.#sendAck(epoch);
    this.#emit('modechange', { mode: to, epoch, tookMs: Math.round(performance.now() - started) });
  }

  #sendAck(epoch) {
    if (this.#state === 'joined' && this.#ws?.readyState === WebSocket.OPEN) {
      this.#ws.send(JSON.stringify({ type: 'switch_ack', epoch }));
    }
  }

  // To the SFU: publish there and receive everyone through the subscriber connection (the
  // server subscribes me to everyone as the switch starts), then close the peer connections.
  async #toSfu(epoch) {
    await this.#publishToSfu().catch(this.#backgroundError);
    if (!this.pcSubscriber) this.#renegotiate('subscriber').catch(this.#backgroundError);
    // Make before break: each peer heard over the mesh is heard through the SFU first (its
    // audio has arrived there, not just been subscribed).
    // A link closes once both ends hear each other through the SFU: each end tells the other
    // ("sfu-ok" on the link's data channel) when it does.
    const linksDone = async () => {
      const heard = await this.#heardVia(this.pcSubscriber, (mid) =>
        [...this.#subs.values()].find((s) => s.mid === mid)?.participant?.identity);
      for (const peer of [...this.#mesh.values()]) {
        const hearsPeer = !peer.tracks.has('audio') || heard.has(peer.identity);
        if (hearsPeer && !peer.toldSfuOk) peer.toldSfuOk = this.#meshTell(peer, 'sfu-ok');
        // A link that never came up has nothing to break.
        const up = peer.channel.readyState === 'open';
        if (hearsPeer && (!up || peer.sfuOk || !this.#local.has('audio'))) this.#meshClose(peer.identity, 'switched');
      }
      return this.#mesh.size === 0;
    };
    await this.#until(linksDone, epoch);
    for (const identity of [...this.#mesh.keys()]) this.#meshClose(identity, 'switched');
  }

  // To peer to peer: a peer connection with everyone, connected, then stop sending to the
  // SFU. The server ends my SFU subscriptions when I acknowledge.
  async #toP2p(epoch) {
    this.#meshAll();
    // Make before break: every peer connected, and the audio of each one that sends audio
    // through the SFU arriving over its peer connection.
    // Each end tells the other ("mesh-ok") once it hears it over their link; I stop sending
    // to the SFU once everyone hears me over the mesh.
    const heardViaMesh = async () => {
      let all = true;
      for (const identity of this.participants.keys()) {
        const peer = this.#mesh.get(identity);
        if (peer?.pc.connectionState !== 'connected') {
          all = false;
          continue;
        }
        const sends = [...this.#subs.values()].some((s) => s.participant?.identity === identity && s.kind === 'audio');
        const hearsPeer = !sends || (await this.#heardVia(peer.pc, () => identity)).has(identity);
        if (hearsPeer && !peer.toldMeshOk) peer.toldMeshOk = this.#meshTell(peer, 'mesh-ok');
        if (!hearsPeer || !(peer.meshOk || !this.#local.has('audio'))) all = false;
      }
      return all;
    };
    await this.#until(heardViaMesh, epoch);
    this.#prewarm = false;
    await this.#unpublishFromSfu().catch(this.#backgroundError);
  }

  // Wait until `ready()` holds, the switch is superseded, or SWITCH_READY_TIMEOUT_MS passed.
  async #until(ready, epoch) {
    const deadline = performance.now() + SWITCH_READY_TIMEOUT_MS;
    while (performance.now() < deadline && this.#switching?.epoch === epoch && this.#state !== 'closed') {
      if (await ready()) return;
      await sleep(50);
    }
  }

  // The identities (`owner(mid)`) whose audio has arrived on `pc`.
  async #heardVia(pc, owner) {
    const heard = new Set();
    if (!pc || pc.connectionState === 'closed') return heard;
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'audio' || !(s.packetsReceived > 0)) return;
      const identity = owner(s.mid);
      if (identity) heard.add(identity);
    });
    return heard;
  }

  // A peer connection with every other participant; of each pair, the identity that sorts
  // first makes the offer.
  #meshAll() {
    const me = this.me?.identity;
    if (!me) return;
    for (const identity of this.participants.keys()) {
      if (me < identity && !this.#mesh.has(identity)) this.#meshOffer(identity).catch(this.#backgroundError);
    }
  }

  #meshPeer(identity) {
    let peer = this.#mesh.get(identity);
    if (peer) return peer;
    const pc = new RTCPeerConnection({ iceServers: this.#iceServers, bundlePolicy: 'max-bundle' });
    // A data channel both sides declare (negotiated): messages while peer to peer.
    const channel = pc.createDataChannel('mesh', { negotiated: true, id: 0, ordered: true });
    peer = {
      identity, pc, channel, tracks: new Map(), sfuOk: false, meshOk: false, toldSfuOk: false, toldMeshOk: false,
    };
    channel.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg !== 'object') return;
      // The switch handshake: the other end hears me through the SFU / over this link.
      if (msg.sys === 'sfu-ok') peer.sfuOk = true;
      else if (msg.sys === 'mesh-ok') peer.meshOk = true;
      else this.#emit('message', { from: identity, to: msg.to ?? null, data: msg.data, reliable: true });
    };
    pc.ontrack = (ev) => this.#onMeshTrack(peer, ev);
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' && this.#mesh.get(identity) === peer) {
        // Start over: the offerer offers again.
        this.#meshClose(identity, 'failed');
        if (this.mode === 'p2p') this.#meshAll();
      }
    };
    this.#mesh.set(identity, peer);
    this.meshConnections.set(identity, pc);
    return peer;
  }

  // Audio and video sections, sending what I publish; the whole offer at once (no trickle:
  // one signaling message per side).
  async #meshOffer(identity) {
    const { pc } = this.#meshPeer(identity);
    for (const kind of ['audio', 'video']) {
      const t = pc.addTransceiver(kind, { direction: 'sendrecv' });
      const local = this.#local.get(kind);
      if (local) await t.sender.replaceTrack(local.track);
    }
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc);
    if (pc.signalingState === 'closed') return;
    this.#signal(identity, { description: { type: 'offer', sdp: pc.localDescription.sdp } });
  }

  async #onP2pSignal(from, data) {
    const description = data?.description;
    if (!description || !this.participants.has(from)) return;
    if (description.type === 'offer') {
      // A fresh offer replaces whatever connection there was with that peer.
      if (this.#mesh.has(from)) this.#meshClose(from, 'replaced');
      const { pc } = this.#meshPeer(from);
      await pc.setRemoteDescription({ type: 'offer', sdp: String(description.sdp) });
      for (const t of pc.getTransceivers()) {
        const local = this.#local.get(t.receiver.track.kind);
        t.direction = 'sendrecv';
        if (local) await t.sender.replaceTrack(local.track);
      }
      await pc.setLocalDescription(await pc.createAnswer());
      await waitIceGathering(pc);
      if (pc.signalingState === 'closed') return;
      this.#signal(from, { description: { type: 'answer', sdp: pc.localDescription.sdp } });
    } else if (description.type === 'answer') {
      const pc = this.#mesh.get(from)?.pc;
      if (pc?.signalingState === 'have-local-offer') {
        await pc.setRemoteDescription({ type: 'answer', sdp: String(description.sdp) });
      }
    }
  }

  // Tell the other end of a link something about the switch; whether it could be sent.
  #meshTell(peer, sys) {
    if (peer.channel.readyState !== 'open') return false;
    peer.channel.send(JSON.stringify({ sys }));
    return true;
  }

  #signal(to, data) {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify({ type: 'p2p_signal', to, data }));
  }

  // Send what I publish (and what I stopped) on every peer connection.
  async #meshSendLocal() {
    for (const { pc } of this.#mesh.values()) {
      for (const t of pc.getTransceivers()) {
        if (t.currentDirection === 'stopped' || !t.sender) continue;
        const local = this.#local.get(t.receiver.track.kind);
        await t.sender.replaceTrack(local ? local.track : null);
      }
    }
  }

  #onMeshTrack(peer, ev) {
    const participant = this.participants.get(peer.identity);
    if (!participant) return;
    const kind = ev.track.kind;
    const trackId = `p2p:${peer.identity}:${kind}`;
    const entry = { trackId, kind, participant, mediaStreamTrack: ev.track, transceiver: ev.transceiver, via: 'p2p' };
    peer.tracks.set(kind, entry);
    if (kind === 'audio') ev.track.enabled = !this.isDeafenedTo(peer.identity);
    this.#emit('track', entry);
  }

  #meshClose(identity, reason) {
    const peer = this.#mesh.get(identity);
    if (!peer) return;
    this.#mesh.delete(identity);
    this.meshConnections.delete(identity);
    for (const entry of peer.tracks.values()) this.#emit('trackended', { ...entry, reason });
    peer.pc.close();
  }

  // ---------- helpers ----------

  #assertInRoom() {
    if (this.#state !== 'joined' && this.#state !== 'reconnecting') {
      throw new RoomError('bad_state', `not in the room (${this.#state})`);
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // A failure of something the server or the connection started (not a caller's request).
  #backgroundError = (e) => {
    if (this.#state === 'closed') return;
    this.#emit('error', { code: e.code || 'client', message: e.message || String(e) });
  };
}
