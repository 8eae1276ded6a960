// Meeting demo page: everyone publishes camera + microphone and receives everyone, through
// /sdk/room.js (the WebSocket room protocol, docs/signaling.md). No build step, no external
// resources.
import { Room } from '/sdk/room.js';

const $ = (id) => document.getElementById(id);
const els = {
  form: $('join-form'), room: $('room'), name: $('name'), camera: $('camera'), mic: $('mic'), join: $('join'),
  error: $('error'), banner: $('banner'), meeting: $('meeting'), roomLabel: $('room-label'),
  toggleMic: $('toggle-mic'), toggleCam: $('toggle-cam'), sound: $('sound'), leave: $('leave'),
  grid: $('grid'), tileTemplate: $('tile-template'), log: $('log'),
  chatLog: $('chat-log'), chatForm: $('chat-form'), chatInput: $('chat-input'),
  roomType: $('room-type'), talk: $('talk'), floor: $('floor'), mode: $('mode'),
};

const HTTP_TIMEOUT_MS = 10_000;
const params = new URLSearchParams(window.location.search);

// Camera size and frame rate: 1280x720 at 30 fps unless the page was opened with
// ?video=WxH@FPS (e.g. 320x240@15; `WxH` or `@FPS` alone also work), which tests use to keep
// several participants on one small machine. Simulcast stays on (layers of 1/4, 1/2 and the
// full size), but Chrome sends fewer layers from a small camera: see docs/sdk.md.
function cameraConstraints(spec) {
  const camera = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
  if (!spec) return camera;
  const m = /^(?:(\d{2,4})x(\d{2,4}))?(?:@(\d{1,3}))?$/.exec(spec.trim());
  if (!m || (!m[1] && !m[3])) {
    console.warn('[sfu-meeting]', `ignoring ?video=${spec}: expected WxH@FPS, e.g. 320x240@15`);
    return camera;
  }
  if (m[1]) Object.assign(camera, { width: { ideal: Number(m[1]) }, height: { ideal: Number(m[2]) } });
  if (m[3]) camera.frameRate = { ideal: Number(m[3]) };
  return camera;
}
const CAMERA = cameraConstraints(params.get('video'));

// The simulcast layer worth receiving for a tile this wide (CSS px): q, h or f.
const layerForWidth = (width) => (width < 320 ? 0 : width < 640 ? 1 : 2);

const tiles = new Map(); // identity → tile (see createTile)
const blockedAudio = new Set(); // <audio> elements whose autoplay the browser refused
let localStream = null; // my camera and microphone (a MediaStream, possibly empty, while in a meeting)

// Everything a test (or a curious developer in the console) may want to look at.
const meeting = {
  state: 'idle', // idle | joining | joined | left | error
  reconnecting: false,
  errors: [], // strings, newest last
  joinStartedAt: null, // performance.now() when Join was pressed
  joinedAt: null, // performance.now() when in the room and publishing
  room: null, // the Room (/sdk/room.js)
  tiles: () => [...tiles.values()].map(describeTile),
  stats: () => collectStats(),
  chat: () => chat.slice(),
  join: () => join(),
  leave: () => leave(),
};
window.sfuMeeting = meeting;

// ---------- small helpers ----------

function log(msg, isError = false) {
  const li = document.createElement('li');
  li.textContent = `${(performance.now() / 1000).toFixed(2)}s ${msg}`;
  if (isError) li.className = 'err';
  els.log.append(li);
  while (els.log.childElementCount > 200) els.log.firstElementChild.remove();
  (isError ? console.error : console.log)('[sfu-meeting]', msg);
}

function showError(msg) {
  meeting.errors.push(msg);
  els.error.textContent = meeting.errors.slice(-5).join('\n');
  els.error.hidden = false;
  log(msg, true);
}

function clearErrors() {
  meeting.errors = [];
  els.error.textContent = '';
  els.error.hidden = true;
}

// A dev token (POST /dev/token, `control dev` only) for this room and identity; with the
// room's admin grant when `admin` (to set the room's type).
async function fetchToken(room, identity, admin = false) {
  let res;
  try {
    res = await fetch('/dev/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      // Dev tokens carry both grants; `grants` says what this page needs should that change.
      body: JSON.stringify({ room, identity, admin, grants: { publish: true, subscribe: true } }),
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
  } catch (e) {
    throw new Error(`POST /dev/token failed: ${e.name === 'TimeoutError' ? 'timed out' : e.message}`);
  }
  if (!res.ok) {
    const body = (await res.text().catch(() => '')).trim();
    throw new Error(`POST /dev/token failed: HTTP ${res.status} ${res.statusText}${body ? ` — ${body}` : ''}`);
  }
  const body = await res.json().catch(() => ({}));
  if (!body.token) throw new Error('POST /dev/token failed: the response has no "token"');
  return body.token;
}

// Make the room a meeting, a voice channel (a hybrid room: peer to peer while small) or a
// push-to-talk channel (PUT /api/rooms/{room}/settings with the room's admin token;
// docs/http-api.md, "Room settings").
async function setRoomType(room, identity, type) {
  const token = await fetchToken(room, identity, true);
  const res = await fetch(`/api/rooms/${encodeURIComponent(room)}/settings`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify(type === 'ptt' ? { ptt: true } : { hybrid: { enabled: type === 'voice' } }),
    signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
  });
  if (!res.ok) throw new Error(`setting the room type failed: HTTP ${res.status} ${(await res.text()).trim()}`);
  const names = { ptt: 'push-to-talk channel', voice: 'voice channel', meeting: 'meeting' };
  log(`room "${room}" is now a ${names[type]}`);
}

// A unique identity from the display name, so that two tabs with the same name both work (the
// room holds one participant per identity: a second join would replace the first).
function identityFor(name) {
  const base = name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^-+|-+$/g, '').slice(0, 32) || 'guest';
  return `${base}-${Math.random().toString(36).slice(2, 8)}`;
}

async function getMedia(audio, video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('camera/microphone unavailable: browsers allow them only in a secure context; open '
      + `this page over https:// or http://localhost (this page is ${window.location.origin})`);
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video: video && CAMERA });
  } catch (e) {
    throw new Error(`camera/microphone unavailable: ${e.name}: ${e.message}`);
  }
}

// ---------- tiles ----------

// Tile size and visibility decide the layer received (or a pause) for its video.
const sizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const tile = tileOf(entry.target);
    if (!tile) continue;
    tile.width = entry.contentRect.width;
    updateQuality(tile);
  }
});
const viewObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const tile = tileOf(entry.target);
    if (!tile) continue;
    tile.visible = entry.isIntersecting;
    updateQuality(tile);
  }
});

function tileOf(el) {
  return tiles.get(el.closest('.tile')?.dataset.identity);
}

function createTile(identity, isMe) {
  const el = els.tileTemplate.content.firstElementChild.cloneNode(true);
  el.dataset.identity = identity;
  const tile = {
    identity, isMe, el,
    video: el.querySelector('video'),
    audio: el.querySelector('audio'),
    videoTrackId: null, // remote tiles: the tracks shown (from the Room's `track` events)
    audioTrackId: null,
    width: null, // rendered video width (CSS px), once measured
    firstFrameAt: null, // performance.now() when its current video first showed a frame
    visible: true,
    speaking: false,
  };
  tile.video.muted = true; // video only: muted autoplay is always allowed
  if (isMe) {
    el.classList.add('me');
    tile.audio.remove(); // never play my own microphone back
    tile.audio = null;
    els.grid.prepend(el);
  } else {
    els.grid.append(el);
  }
  tiles.set(identity, tile);
  sizeObserver.observe(tile.video);
  viewObserver.observe(el);
  renderTile(tile);
  return tile;
}

function removeTile(identity) {
  const tile = tiles.get(identity);
  if (!tile) return;
  sizeObserver.unobserve(tile.video);
  viewObserver.unobserve(tile.el);
  tile.video.srcObject = null;
  if (tile.audio) {
    tile.audio.srcObject = null;
    blockedAudio.delete(tile.audio);
  }
  tile.el.remove();
  tiles.delete(identity);
}

// The published track of a kind a tile stands for: mine from the Room's local tracks, others'
// from the room model (the one shown if several).
function publishedTrack(tile, kind) {
  const room = meeting.room;
  if (!room) return undefined;
  if (tile.isMe) return room.localTracks.get(kind);
  const p = room.participants.get(tile.identity);
  if (!p) return undefined;
  const shown = kind === 'video' ? tile.videoTrackId : tile.audioTrackId;
  return p.tracks.get(shown) || [...p.tracks.values()].find((t) => t.kind === kind);
}

function describeTile(tile) {
  const room = meeting.room;
  const p = tile.isMe ? room?.me : room?.participants.get(tile.identity);
  const audio = publishedTrack(tile, 'audio');
  const video = publishedTrack(tile, 'video');
  return {
    identity: tile.identity,
    name: p?.name || tile.identity,
    isMe: tile.isMe,
    hasVideo: tile.isMe ? Boolean(video) : tile.videoTrackId !== null,
    hasAudio: tile.isMe ? Boolean(audio) : tile.audioTrackId !== null,
    muted: { audio: Boolean(audio?.muted), video: Boolean(video?.muted) },
    speaking: tile.speaking,
    quality: p?.quality || 'unknown', // excellent | good | poor | lost | unknown
    firstFrameAt: tile.firstFrameAt,
  };
}

function renderTile(tile) {
  const d = describeTile(tile);
  const name = tile.el.querySelector('.name');
  name.textContent = d.isMe ? `${d.name} (you)` : d.name;
  tile.el.querySelector('.avatar').textContent = (d.name[0] || '?').toUpperCase();
  setBadge(tile.el.querySelector('.mic'), 'mic', publishedTrack(tile, 'audio'));
  setBadge(tile.el.querySelector('.cam'), 'cam', publishedTrack(tile, 'video'));
  tile.el.classList.toggle('speaking', d.speaking);
  tile.el.classList.toggle('no-video', !d.hasVideo || d.muted.video);
  const signal = tile.el.querySelector('.signal');
  signal.dataset.quality = d.quality;
  signal.title = `connection quality: ${d.quality}`;
  signal.setAttribute('aria-label', signal.title);
}

function setBadge(el, label, track) {
  const state = !track ? 'none' : track.muted ? 'off' : 'on';
  el.textContent = state === 'none' ? `no ${label}` : `${label} ${state}`;
  el.className = `badge ${label} ${state}`;
}

// Receive no more than the tile needs: a small tile gets the low layer, a hidden one nothing.
function updateQuality(tile) {
  const room = meeting.room;
  if (tile.isMe || !room || !tile.videoTrackId || tile.width === null) return;
  const trackId = tile.videoTrackId;
  const paused = !tile.visible || tile.width === 0;
  room.setSubscription(trackId, { maxLayer: layerForWidth(tile.width), paused })
    .catch((e) => log(`set_subscription ${trackId}: ${e.message}`, true));
}

function showLocalPreview() {
  const tile = tiles.get(meeting.room.me.identity);
  const video = localStream.getVideoTracks();
  showVideo(tile, video.length ? new MediaStream(video) : null);
  renderTile(tile);
}

// Put a stream (or nothing) on a tile's <video>, and note when its first frame shows
// (tile.firstFrameAt: how long joining took, as a user sees it).
function showVideo(tile, stream) {
  const { video } = tile;
  video.srcObject = stream;
  tile.firstFrameAt = null;
  if (!stream) return;
  const mark = () => {
    if (video.srcObject === stream && tile.firstFrameAt === null) tile.firstFrameAt = performance.now();
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(mark);
  else video.addEventListener('loadeddata', mark, { once: true });
  video.play().catch(() => {});
}

function playAudio(el) {
  el.play().catch((e) => {
    if (e.name !== 'NotAllowedError') return;
    // Autoplay with sound blocked until the user interacts with the page.
    blockedAudio.add(el);
    els.sound.hidden = false;
  });
}

// ---------- room events ----------

function wire(room) {
  room.addEventListener('participantjoined', ({ detail }) => {
    log(`${detail.participant.name} joined`);
    if (!tiles.has(detail.participant.identity)) createTile(detail.participant.identity, false);
  });
  room.addEventListener('participantleft', ({ detail }) => {
    log(`${detail.participant.name} left (${detail.reason})`);
    removeTile(detail.participant.identity);
  });
  for (const type of ['trackpublished', 'trackunpublished', 'trackmuted']) {
    room.addEventListener(type, ({ detail }) => {
      const tile = tiles.get(detail.participant.identity);
      if (tile) renderTile(tile);
      if (tile?.isMe) renderControls();
    });
  }
  room.addEventListener('track', ({ detail }) => {
    const { participant, trackId, kind, mediaStreamTrack } = detail;
    log(`receiving ${participant.name}'s ${kind} (${trackId})`);
    const tile = tiles.get(participant.identity) || createTile(participant.identity, false);
    const stream = new MediaStream([mediaStreamTrack]);
    if (kind === 'video') {
      tile.videoTrackId = trackId;
      showVideo(tile, stream);
      updateQuality(tile);
    } else {
      tile.audioTrackId = trackId;
      tile.audio.srcObject = stream;
      playAudio(tile.audio);
    }
    renderTile(tile);
  });
  room.addEventListener('trackended', ({ detail }) => {
    const tile = tiles.get(detail.participant.identity);
    if (!tile) return;
    if (tile.videoTrackId === detail.trackId) {
      tile.videoTrackId = null;
      showVideo(tile, null);
    }
    if (tile.audioTrackId === detail.trackId) {
      tile.audioTrackId = null;
      tile.audio.srcObject = null;
      blockedAudio.delete(tile.audio);
    }
    renderTile(tile);
  });
  room.addEventListener('speakers', ({ detail }) => {
    const active = new Set(detail.speakers.map((s) => s.identity));
    for (const tile of tiles.values()) {
      if (tile.speaking === active.has(tile.identity)) continue;
      tile.speaking = active.has(tile.identity);
      renderTile(tile);
    }
  });
  room.addEventListener('quality', ({ detail }) => {
    const { participant, quality } = detail;
    log(`${participant === room.me ? 'my' : `${participant.name}'s`} connection: ${quality}`, quality === 'lost');
    const tile = tiles.get(participant.identity);
    if (tile) renderTile(tile);
  });
  room.addEventListener('message', ({ detail }) => {
    if (detail.data && typeof detail.data.chat === 'string') addChat(nameOf(detail.from), detail.data.chat);
  });
  room.addEventListener('floor', () => renderFloor());
  room.addEventListener('switching', ({ detail }) => {
    log(`moving to ${detail.to === 'p2p' ? 'peer to peer' : 'the SFU'} (switch ${detail.epoch})`);
    renderMode();
  });
  room.addEventListener('modechange', ({ detail }) => {
    log(`media ${detail.mode === 'p2p' ? 'peer to peer' : 'through the SFU'}${detail.tookMs != null ? ` (switch took ${detail.tookMs} ms)` : ''}`);
    renderMode();
  });
  room.addEventListener('floorgranted', () => renderFloor());
  room.addEventListener('floorrevoked', ({ detail }) => {
    log(`floor revoked: ${detail.reason}`);
    renderFloor();
  });
  room.addEventListener('error', ({ detail }) => showError(`${detail.code}: ${detail.message}`));
  room.addEventListener('disconnected', ({ detail }) => {
    if (meeting.state !== 'joining' && meeting.state !== 'joined') return; // we left or gave up
    if (detail.willReconnect) {
      meeting.reconnecting = true;
      els.banner.hidden = false;
      log(`signaling connection lost (${detail.code}); reconnecting`, true);
      return;
    }
    showError(`disconnected from the room: ${detail.reason || `close code ${detail.code}`}`);
    teardown();
    meeting.state = 'error';
  });
  room.addEventListener('reconnected', ({ detail }) => {
    meeting.reconnecting = false;
    els.banner.hidden = true;
    log(detail.resumed ? 'reconnected (resumed)' : 'reconnected (joined afresh: media restarted)');
    for (const tile of tiles.values()) renderTile(tile);
  });
}

// ---------- chat ----------

// Chat messages seen on this page, in order (a test hook reads them): {from, text}.
const chat = [];

function nameOf(identity) {
  return meeting.room?.participants.get(identity)?.name || identity;
}

function addChat(from, text) {
  chat.push({ from, text });
  const li = document.createElement('li');
  const who = document.createElement('span');
  who.className = 'from';
  who.textContent = from;
  li.append(who, document.createTextNode(text));
  els.chatLog.append(li);
  li.scrollIntoView({ block: 'nearest' });
}

function sendChat(text) {
  const room = meeting.room;
  if (!text || meeting.state !== 'joined' || !room) return false;
  try {
    room.send({ chat: text });
  } catch (e) {
    showError(`chat not sent: ${e.message}`);
    return false;
  }
  addChat('me', text);
  return true;
}

// ---------- join / leave / controls ----------

async function join() {
  if (meeting.state === 'joining' || meeting.state === 'joined') return;
  clearErrors();
  const roomName = els.room.value.trim();
  const name = els.name.value.trim();
  if (!roomName || !name) {
    showError('Enter a room name and a display name.');
    return;
  }
  meeting.state = 'joining';
  meeting.joinStartedAt = performance.now();
  meeting.joinedAt = null;
  setFormEnabled(false);
  renderControls();
  log(`joining room "${roomName}" as "${name}"`);

  try {
    localStream = new MediaStream();
    if (els.camera.checked || els.mic.checked) {
      try {
        const stream = await getMedia(els.mic.checked, els.camera.checked);
        for (const track of stream.getTracks()) localStream.addTrack(track);
      } catch (e) {
        showError(`${e.message}; joining without them`);
      }
    }
    const identity = identityFor(name);
    if (els.roomType.value) await setRoomType(roomName, identity, els.roomType.value);
    const token = await fetchToken(roomName, identity);
    const room = new Room({ url: window.location.origin, room: roomName, token, name });
    meeting.room = room;
    wire(room); // before connect(): tiles for those already there come from participantjoined
    els.roomLabel.textContent = `Room ${roomName}`;
    els.form.hidden = true;
    els.meeting.hidden = false;
    await room.connect();
    log(`joined as ${room.me.identity}`);
    createTile(room.me.identity, true);
    showLocalPreview();
    if (localStream.getTracks().length) {
      try {
        await room.publish(localStream);
        log(`publishing ${localStream.getTracks().map((t) => t.kind).join(' + ')}`);
      } catch (e) {
        showError(`publishing failed: ${e.message}`);
      }
      // My tile's badges and video come from room.localTracks, which publish() has filled.
      const me = tiles.get(room.me.identity);
      if (me) renderTile(me);
    }
    if (meeting.state !== 'joining') return; // the room closed meanwhile (reported already)
    meeting.state = 'joined';
    meeting.joinedAt = performance.now();
    renderControls();
    renderMode();
  } catch (e) {
    showError(e.message || String(e));
    meeting.state = 'error';
    teardown();
    meeting.room?.leave();
  }
}

async function leave() {
  if (meeting.state !== 'joined') return;
  log('leaving');
  meeting.state = 'left';
  const left = meeting.room.leave(); // sends `leave` at once
  teardown();
  await left;
}

// Back to the form: tiles gone, devices released. meeting.room stays for inspection.
function teardown() {
  for (const identity of [...tiles.keys()]) removeTile(identity);
  els.chatLog.replaceChildren();
  chat.length = 0;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  blockedAudio.clear();
  els.sound.hidden = true;
  els.banner.hidden = true;
  els.talk.hidden = els.floor.hidden = true;
  els.meeting.hidden = true;
  els.form.hidden = false;
  meeting.reconnecting = false;
  setFormEnabled(true);
}

function setFormEnabled(on) {
  for (const el of [els.room, els.name, els.roomType, els.camera, els.mic, els.join]) el.disabled = !on;
}

// How media travels (hybrid rooms): shown in the toolbar, `data-mode` for tests.
function renderMode() {
  const mode = meeting.room?.mode;
  els.mode.dataset.mode = mode || '';
  els.mode.textContent = mode === 'p2p' ? 'peer to peer' : '';
}

// ---------- push to talk ----------

// The floor's state under the toolbar: who talks, who waits, whether I may.
function renderFloor() {
  const room = meeting.room;
  const floor = room?.floor;
  els.talk.hidden = els.floor.hidden = !floor;
  if (!floor) return;
  const me = room.me?.identity;
  const who = floor.holder ? (floor.holder === me ? 'You are talking' : `${nameOf(floor.holder)} is talking`) : 'Nobody is talking';
  const line = floor.queue.length ? `; waiting: ${floor.queue.map((i) => (i === me ? 'you' : nameOf(i))).join(', ')}` : '';
  els.floor.textContent = who + line;
  els.floor.dataset.holder = floor.holder || '';
  els.talk.classList.toggle('on', room.holdsFloor);
  els.talk.textContent = room.holdsFloor ? 'Talking… (release to stop)' : 'Hold to talk';
}

let talkPressed = false;

async function pressTalk() {
  const room = meeting.room;
  if (meeting.state !== 'joined' || !room?.floor || talkPressed) return;
  talkPressed = true;
  try {
    const answer = await room.requestFloor();
    log(answer.granted ? 'floor granted' : `waiting for the floor (position ${answer.position})`);
  } catch (e) {
    showError(`floor: ${e.message}`);
  }
}

function releaseTalk() {
  const room = meeting.room;
  if (!talkPressed) return;
  talkPressed = false;
  if (meeting.state === 'joined' && room?.floor) room.releaseFloor();
}

function renderControls() {
  for (const button of [els.toggleMic, els.toggleCam, els.leave]) button.disabled = meeting.state !== 'joined';
  const local = meeting.room?.localTracks;
  const mic = local?.get('audio');
  const cam = local?.get('video');
  els.toggleMic.textContent = !mic ? 'Turn mic on' : mic.muted ? 'Unmute' : 'Mute';
  els.toggleCam.textContent = !cam || cam.muted ? 'Camera on' : 'Camera off';
  els.toggleMic.classList.toggle('off', !mic || mic.muted);
  els.toggleCam.classList.toggle('off', !cam || cam.muted);
}

// Mute/unmute what I publish; a device not started at join is started and published now.
async function toggle(kind) {
  const room = meeting.room;
  if (meeting.state !== 'joined') return;
  const entry = room.localTracks.get(kind);
  try {
    if (entry) {
      await room.setMuted(kind, !entry.muted);
    } else {
      const stream = await getMedia(kind === 'audio', kind === 'video');
      for (const track of stream.getTracks()) localStream.addTrack(track);
      showLocalPreview();
      await room.publish(stream);
    }
  } catch (e) {
    showError(`${kind === 'audio' ? 'microphone' : 'camera'}: ${e.message}`);
  }
  renderControls();
  const me = tiles.get(room.me.identity);
  if (me) renderTile(me);
}

// ---------- stats (test hook) ----------

// Inbound RTP of the subscriber connection, grouped by the participant whose track arrives on
// each section (by mid; by receiver track id where the browser gives no mid).
async function collectStats() {
  const room = meeting.room;
  const pc = room?.pcSubscriber;
  if (!pc) return {};
  const byMid = new Map();
  const byTrack = new Map();
  for (const sub of room.subscriptions.values()) {
    if (!sub.participant) continue;
    byMid.set(sub.mid, sub.participant.identity);
    byTrack.set(sub.mediaStreamTrack.id, sub.participant.identity);
  }
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const identity = byMid.get(s.mid) ?? byTrack.get(s.trackIdentifier);
    if (!identity) return;
    out[identity] ??= { framesDecoded: 0, audioPacketsReceived: 0, frameWidth: 0 };
    const o = out[identity];
    if (s.kind === 'video') {
      o.framesDecoded += s.framesDecoded || 0;
      o.frameWidth = Math.max(o.frameWidth, s.frameWidth || 0);
      // Why a tile stalls: packets lost, asked again (NACK), keyframes asked (PLI) and got.
      o.videoPacketsLost = (o.videoPacketsLost || 0) + (s.packetsLost || 0);
      o.nackCount = (o.nackCount || 0) + (s.nackCount || 0);
      o.pliCount = (o.pliCount || 0) + (s.pliCount || 0);
      o.keyFramesDecoded = (o.keyFramesDecoded || 0) + (s.keyFramesDecoded || 0);
      o.freezeCount = (o.freezeCount || 0) + (s.freezeCount || 0);
      o.framesReceived = (o.framesReceived || 0) + (s.framesReceived || 0);
      o.videoPacketsReceived = (o.videoPacketsReceived || 0) + (s.packetsReceived || 0);
      o.framesDropped = (o.framesDropped || 0) + (s.framesDropped || 0);
      o.ssrc = s.ssrc;
    } else if (s.kind === 'audio') {
      o.audioPacketsReceived += s.packetsReceived || 0;
    }
  });
  return out;
}

// ---------- wiring ----------

els.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  join();
});
els.leave.addEventListener('click', () => leave());
els.chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (sendChat(els.chatInput.value.trim())) els.chatInput.value = '';
});
els.toggleMic.addEventListener('click', () => toggle('audio'));
els.talk.addEventListener('pointerdown', () => pressTalk());
for (const ev of ['pointerup', 'pointerleave', 'pointercancel']) els.talk.addEventListener(ev, () => releaseTalk());
els.toggleCam.addEventListener('click', () => toggle('video'));
els.sound.addEventListener('click', () => {
  for (const el of blockedAudio) el.play().catch(() => {});
  blockedAudio.clear();
  els.sound.hidden = true;
});

// Best effort on tab close: `leave` goes out at once (the others see me leave now rather than
// after the resume window).
window.addEventListener('pagehide', () => leave());

const flag = (name, dflt) => {
  const v = params.get(name);
  if (v === null) return dflt;
  return !['0', 'false', 'no', 'off', ''].includes(v.toLowerCase());
};
if (params.get('room')) els.room.value = params.get('room');
els.name.value = params.get('name') || `guest-${Math.random().toString(36).slice(2, 6)}`;
els.camera.checked = flag('camera', true);
els.mic.checked = flag('mic', true);
if (flag('autojoin', false)) join();
