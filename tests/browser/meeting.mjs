// Real-browser end-to-end test of the meeting page (/meeting, on the room SDK /sdk/room.js).
//
// Four participants, each in its own browser context of one Debian Chromium (fake camera and
// microphone), join one room through the page at the same time: three with ?autojoin=1, the
// fourth by clicking Join. Asserted:
//   - every page shows 4 tiles and decodes ≥ MIN_FPS video frames/s from each of the 3 others,
//     over a window of MEASURE_S (≥ 10) seconds that starts once every tile decoded a frame,
//     and receives audio from each (packet counts > 0 and growing over the window);
//   - every participant publishes 3 simulcast layers; its own tile shows camera and microphone;
//   - after one clicks Leave, the 3 others each show exactly 3 tiles (themselves and the two
//     still there) within LEAVE_TIMEOUT_MS.
// Nothing else about timing is asserted. Figures (join time per participant: join started →
// `joined`; first frame per tile: join started → the tile showed a frame; frames/s, frame
// width and audio packets/s per tile; the publishers' layers) are printed and written to
// $OUT_DIR/meeting-figures.json, with screenshots (meeting-NAME-measured.png, and
// meeting-NAME-after-leave.png for the three who stay), page logs (meeting-NAME.console.log) and
// the signaling messages each page exchanged (meeting-NAME.ws.log).
//
// Run through run.sh, which provides the network namespace and the server. Environment:
//   SFU_URL             base URL of `control dev`, e.g. http://10.203.0.1:34567   (required)
//   OUT_DIR             where screenshots, page logs and figures go (default: none written)
//   CHROMIUM            Chromium executable (default: ./chromium.sh, which runs /usr/bin/chromium)
//   MEETING_VIDEO       camera size and rate asked of the page (?video=, default 320x240@15):
//                       4 simulcast publishers and 12 decoders share a 2-core CI machine
//   MEASURE_S           length of the measured window in seconds (default 12, at least 10)
//   LAYER_TRACE         set: print, every second of the window, each page's publisher layers
//                       and per tile frames decoded/received, width, packets, frames dropped,
//                       losses, NACKs, PLIs, keyframes and freezes (to diagnose a stalled tile
//                       beside the server's debug log of layer switches and keyframe requests)
//   MEETING_STATIC_DIR  development aid: serve /meeting, /meeting.js, /meeting.css, /style.css
//                       and /sdk/room.js from this directory (e.g. control/static) instead of
//                       the server, which embeds them at build time
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, OUT_DIR, SFU_URL, chromiumArgs, sleep } from './chromium.mjs';

const VIDEO = process.env.MEETING_VIDEO ?? '320x240@15';
const MEASURE_S = Math.max(10, Number(process.env.MEASURE_S || 12));
const STATIC_DIR = process.env.MEETING_STATIC_DIR || '';

// Thresholds and deadlines (generous: a 2-core machine runs the server and four pages).
const MIN_FPS = 5; // decoded video frames per second, per tile
const JOIN_TIMEOUT_MS = 40_000; // page load → `joined`
const FIRST_FRAMES_TIMEOUT_MS = 60_000; // until every tile of every page decoded a frame
const LEAVE_TIMEOUT_MS = 20_000; // Leave clicked → the others show one tile fewer

const NAMES = ['ada', 'bob', 'cyd', 'dee'];
const CHAT_TIMEOUT_MS = 20_000;
const SETTLE_TIMEOUT_MS = 15_000;
const SETTLED_WIDTH = 160;
const CLICKS_JOIN = 'dee'; // opens the page without autojoin and clicks Join
const LEAVER = 'bob';

const CHROMIUM_ARGS = chromiumArgs({
  extra: [
    // libwebrtc sends fewer simulcast layers for small input (320x240: 1 layer, the first one,
    // rid q at 1/4 size: 80x60 for everyone). Lifting that limit lets a small fake camera
    // exercise the same 3-layer simulcast (80x60, 160x120, 320x240) as a 720p camera, at a
    // fraction of the CPU.
    '--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/',
  ],
  // A page fulfilled by page.route() has no address, so Chromium counts it as public and blocks
  // its WebSocket to the server's private address (ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
  last: STATIC_DIR ? ['--disable-features=LocalNetworkAccessChecks'] : [],
});

// What MEETING_STATIC_DIR replaces: URL path → [file, content type].
const STATIC_FILES = {
  '/meeting': ['meeting.html', 'text/html; charset=utf-8'],
  '/meeting.js': ['meeting.js', 'text/javascript; charset=utf-8'],
  '/meeting.css': ['meeting.css', 'text/css; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
  '/sdk/room.js': ['sdk/room.js', 'text/javascript; charset=utf-8'],
};

const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

// Runs inside the page: the meeting hooks as plain data (with the publisher's simulcast layers
// when asked).
async function pageSnapshot(withPublisher) {
  const m = window.sfuMeeting;
  if (!m) return { now: performance.now(), state: 'no window.sfuMeeting', errors: [], tiles: [], stats: {}, chat: [] };
  const room = m.room;
  let stats = {};
  try {
    stats = await m.stats();
  } catch (e) {
    stats = { error: String(e) };
  }
  const now = performance.now(); // when the inbound figures were read
  let layers = null;
  if (withPublisher && room?.pcPublisher) {
    layers = [];
    (await room.pcPublisher.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      layers.push({
        rid: s.rid || '', active: s.active !== false, width: s.frameWidth || 0, height: s.frameHeight || 0,
        fps: Math.round(s.framesPerSecond || 0), framesEncoded: s.framesEncoded || 0,
        limitation: s.qualityLimitationReason || 'none',
      });
    });
    const order = { q: 0, h: 1, f: 2 };
    layers.sort((a, b) => (order[a.rid] ?? 9) - (order[b.rid] ?? 9));
  }
  // The simulcast layer each remote video is capped at (set by the page from the tile's width).
  const maxLayer = {};
  for (const sub of room?.subscriptions?.values() ?? []) {
    if (sub.kind === 'video' && sub.participant) maxLayer[sub.participant.identity] = sub.paused ? 'paused' : sub.maxLayer;
  }
  // My tile as drawn: the camera preview shows unless the tile has class no-video (avatar).
  const mine = document.querySelector('#grid .tile.me');
  const ownTile = mine && {
    preview: !mine.classList.contains('no-video') && Boolean(mine.querySelector('video')?.srcObject),
    badges: [...mine.querySelectorAll('.badge')].map((b) => b.textContent),
  };
  // The tiles as drawn, in grid order: identity, and whether the avatar hides the video.
  const drawn = [...document.querySelectorAll('#grid .tile')]
    .map((el) => ({ identity: el.dataset.identity, avatar: el.classList.contains('no-video') }));
  return {
    chat: m.chat ? m.chat() : [],
    now,
    state: m.state,
    layers,
    ownTile,
    drawn,
    reconnecting: m.reconnecting,
    errors: m.errors.slice(),
    joinStartedAt: m.joinStartedAt,
    joinedAt: m.joinedAt,
    me: room?.me?.identity ?? null,
    roomState: room?.state ?? null,
    subscriber: room?.pcSubscriber?.connectionState ?? null,
    publisher: room?.pcPublisher?.connectionState ?? null,
    tiles: m.tiles(),
    stats,
    maxLayer,
  };
}

function meetingUrl(params) {
  return `${SFU_URL}/meeting?${new URLSearchParams(params)}`;
}

class Participant {
  constructor(browser, name, room) {
    this.browser = browser;
    this.name = name;
    this.room = room;
    this.console = [];
    this.exceptions = []; // uncaught exceptions in the page
    this.ws = []; // signaling frames, both ways (SDPs cut short)
    this.firstFramePoll = new Map(); // identity → page time a poll first saw a decoded frame
  }

  async open({ autojoin }) {
    this.context = await this.browser.newContext({
      permissions: ['camera', 'microphone'],
      viewport: { width: 1200, height: 800 },
    });
    if (STATIC_DIR) await routeStatic(this.context);
    this.page = await this.context.newPage();
    this.page.on('console', (m) => this.console.push(`[${m.type()}] ${m.text()}`));
    this.page.on('pageerror', (e) => {
      this.exceptions.push(e.message);
      this.console.push(`[pageerror] ${e.stack || e.message}`);
    });
    this.page.on('crash', () => this.console.push('[crash] page crashed'));
    this.page.on('websocket', (ws) => {
      const t0 = Date.now();
      const note = (dir, payload) => {
        const text = String(payload).replace(/("sdp":")((?:[^"\\]|\\.){0,40})(?:[^"\\]|\\.)*"/, '$1$2…"');
        this.ws.push(`${((Date.now() - t0) / 1000).toFixed(3)} ${dir} ${text}`);
      };
      this.ws.push(`open ${ws.url()} at ${new Date(t0).toISOString()}`);
      ws.on('framesent', (f) => note('→', f.payload));
      ws.on('framereceived', (f) => note('←', f.payload));
      ws.on('close', () => this.ws.push('closed'));
    });
    const params = { room: this.room, name: this.name };
    if (VIDEO) params.video = VIDEO;
    if (autojoin) params.autojoin = '1';
    const res = await this.page.goto(meetingUrl(params), { waitUntil: 'load', timeout: 20_000 });
    if (!res || !res.ok()) {
      throw new Error(`${this.name}: GET /meeting → ${res ? `HTTP ${res.status()}` : 'no response'}`);
    }
    if (!autojoin) await this.page.click('#join', { timeout: 10_000 });
  }

  async snapshot({ withPublisher = false } = {}) {
    const snap = await this.page.evaluate(pageSnapshot, withPublisher);
    // Fallback for a page without tile.firstFrameAt: the first poll that saw a decoded frame.
    for (const [identity, s] of Object.entries(snap.stats)) {
      if (s && s.framesDecoded > 0 && !this.firstFramePoll.has(identity)) this.firstFramePoll.set(identity, snap.now);
    }
    this.last = snap;
    return snap;
  }

  // Polls until pred(snapshot) holds; fails early when the page reports an error.
  async waitFor(what, pred, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const snap = await this.snapshot();
      if (pred(snap)) return snap;
      if (snap.errors.length) {
        throw new Error(`${this.name}: page error while waiting for ${what}: ${snap.errors.join(' | ')}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`${this.name}: timed out after ${timeoutMs / 1000}s waiting for ${what}; `
          + `last state: ${JSON.stringify(brief(snap))}`);
      }
      await sleep(250);
    }
  }

  async screenshot(label) {
    if (!OUT_DIR || !this.page || this.page.isClosed()) return;
    try {
      await this.page.screenshot({ path: join(OUT_DIR, `meeting-${this.name}-${label}.png`), timeout: 10_000 });
    } catch (e) {
      this.console.push(`[test] screenshot ${label} failed: ${e.message}`);
    }
  }

  async saveLogs() {
    if (!OUT_DIR) return;
    // The page's own log (its "Log" panel) has timestamps: performance.now() in seconds.
    const pageLog = this.page && !this.page.isClosed() ? await this.page.evaluate(
      () => [...document.querySelectorAll('#log li')].map((li) => li.textContent),
    ).catch((e) => [`(unreadable: ${e.message})`]) : [];
    writeFileSync(join(OUT_DIR, `meeting-${this.name}.console.log`),
      `${this.console.join('\n')}\n\n--- the page's log panel ---\n${pageLog.join('\n')}\n`);
    writeFileSync(join(OUT_DIR, `meeting-${this.name}.ws.log`), `${this.ws.join('\n')}\n`);
  }
}

async function routeStatic(context) {
  const origin = new URL(SFU_URL).origin;
  await context.route((url) => url.origin === origin && url.pathname in STATIC_FILES, (route) => {
    const [file, contentType] = STATIC_FILES[new URL(route.request().url()).pathname];
    return route.fulfill({ status: 200, contentType, body: readFileSync(join(STATIC_DIR, file)) });
  });
}

function brief(snap) {
  return {
    state: snap.state, roomState: snap.roomState, errors: snap.errors, publisher: snap.publisher,
    subscriber: snap.subscriber,
    tiles: snap.tiles.map((t) => `${t.name}${t.isMe ? '(me)' : ''}:${t.hasVideo ? 'v' : '-'}${t.hasAudio ? 'a' : '-'}`),
    drawn: snap.drawn?.length,
    stats: snap.stats,
  };
}

// The remote tiles of a snapshot, each with its inbound figures.
function remoteTiles(snap) {
  return snap.tiles.filter((t) => !t.isMe).map((t) => ({ ...t, stats: snap.stats[t.identity] || null }));
}

// ---------------------------------------------------------------------------------------------

const ROOM = `meet-${Date.now().toString(36)}`;
let browser;
const people = {}; // name → Participant
const result = {
  room: ROOM, server: SFU_URL, video: VIDEO || 'page default', static_dir: STATIC_DIR || null,
  window_s: null, participants: {}, leave: null,
};
let failed = false;

test(`4 participants meet: each decodes ≥ ${MIN_FPS} frames/s and hears each of the 3 others`,
  { timeout: 150_000 }, async () => {
    assert.ok(SFU_URL, 'SFU_URL is not set (run the test through run.sh)');
    if (OUT_DIR) mkdirSync(OUT_DIR, { recursive: true });
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
      for (const name of NAMES) people[name] = new Participant(browser, name, ROOM);

      // Everyone at once: the joins race each other, as they do when a meeting starts.
      await Promise.all(NAMES.map((name) => people[name].open({ autojoin: name !== CLICKS_JOIN })));
      const joined = await Promise.all(NAMES.map((name) => people[name].waitFor('`joined`',
        (s) => s.state === 'joined', JOIN_TIMEOUT_MS)));
      NAMES.forEach((name, i) => {
        const s = joined[i];
        result.participants[name] = {
          identity: s.me,
          joined_by: name === CLICKS_JOIN ? 'click' : 'autojoin',
          join_ms: Math.round(s.joinedAt - s.joinStartedAt),
          tiles: {},
        };
      });
      const nameOf = Object.fromEntries(NAMES.map((n) => [result.participants[n].identity, n]));

      // Every page: 4 tiles (me + 3), each remote one decoding video and receiving audio.
      const ready = (s) => s.tiles.length === NAMES.length && remoteTiles(s).length === NAMES.length - 1
        && s.drawn.length === NAMES.length
        && remoteTiles(s).every((t) => t.hasVideo && t.hasAudio && t.stats
          && t.stats.framesDecoded > 0 && t.stats.audioPacketsReceived > 0);
      await Promise.all(NAMES.map((name) => people[name].waitFor(
        '4 tiles, each remote one decoding video and receiving audio', ready, FIRST_FRAMES_TIMEOUT_MS)));

      // Let every remote tile reach the simulcast layer the page asks for (h, 160 px wide, for
      // these tiles) before measuring, as a layer switch waits for a keyframe; but do not
      // require it: a publisher short of CPU may send less, and the frame rate bound below
      // still applies.
      const climbed = (s) => remoteTiles(s).every((t) => t.stats && t.stats.frameWidth >= SETTLED_WIDTH);
      const settled = await Promise.all(NAMES.map((name) => people[name]
        .waitFor('every remote tile on layer h', climbed, SETTLE_TIMEOUT_MS).then(() => true, () => false)));
      result.settled = Object.fromEntries(NAMES.map((name, i) => [name, settled[i]]));

      // The measured window: from now (every tile has decoded a frame) for MEASURE_S seconds.
      const t0 = {};
      for (const name of NAMES) t0[name] = await people[name].snapshot();
      if (process.env.LAYER_TRACE) {
        for (let i = 0; i < MEASURE_S; i++) {
          await sleep(1000);
          for (const name of NAMES) {
            const s = await people[name].snapshot({ withPublisher: true });
            const fr = remoteTiles(s).map((t) => { const x = t.stats || {}; return `${nameOf[t.identity]}:${x.framesDecoded}/${x.framesReceived}@${x.frameWidth} pk${x.videoPacketsReceived} d${x.framesDropped} s${x.ssrc} l${x.videoPacketsLost} n${x.nackCount} p${x.pliCount} k${x.keyFramesDecoded} z${x.freezeCount}`; }).join(' ');
            const pub = (s.layers || []).map((l) => `${l.rid}:${l.framesEncoded}/${l.limitation}`).join(' ');
            console.log(`TRACE ${new Date().toISOString().slice(11, 23)} ${i} ${name} pub[${pub}] recv[${fr}]`);
          }
        }
      } else {
        await sleep(MEASURE_S * 1000);
      }
      const t1 = {};
      for (const name of NAMES) t1[name] = await people[name].snapshot({ withPublisher: true });
      await Promise.all(NAMES.map((name) => people[name].screenshot('measured')));

      for (const name of NAMES) {
        const a = t0[name];
        const b = t1[name];
        const p = result.participants[name];
        const dt = (b.now - a.now) / 1000;
        const zero = { framesDecoded: 0, audioPacketsReceived: 0, frameWidth: 0 };
        for (const tile of remoteTiles(b)) {
          const from = nameOf[tile.identity] || tile.identity;
          const before = a.stats[tile.identity] || zero;
          const now = tile.stats || zero;
          const firstFrameAt = tile.firstFrameAt ?? people[name].firstFramePoll.get(tile.identity) ?? null;
          const frames = now.framesDecoded - before.framesDecoded;
          p.tiles[from] = {
            // Join started → the tile showed (page hook) or a poll saw (older page) a frame.
            first_frame_ms: firstFrameAt === null ? null : Math.round(firstFrameAt - b.joinStartedAt),
            first_frame_by: tile.firstFrameAt != null ? 'page' : 'poll',
            fps: round(frames / dt),
            frames_in_window: frames,
            frame_width: now.frameWidth,
            // Why a tile would stall: frames dropped before decoding, keyframes asked (PLI).
            frames_dropped_in_window: (now.framesDropped || 0) - (before.framesDropped || 0),
            plis_in_window: (now.pliCount || 0) - (before.pliCount || 0),
            max_layer: b.maxLayer[tile.identity] ?? null,
            audio_packets_start: before.audioPacketsReceived,
            audio_packets_end: now.audioPacketsReceived,
            audio_packets_per_s: round((now.audioPacketsReceived - before.audioPacketsReceived) / dt),
          };
        }
        // The connection quality each tile shows (its `.signal` indicator), own tile included.
        p.qualities = Object.fromEntries(b.tiles.map((t) => [nameOf[t.identity] || t.identity, t.quality]));
        p.own_tile = b.ownTile;
        p.remote_tiles_showing_avatar = b.drawn.filter((t) => t.avatar && t.identity !== b.me).map((t) => nameOf[t.identity] || t.identity);
        p.publisher_layers = b.layers;
        p.window_s = round(dt, 2);
        p.errors = b.errors;
      }
      result.window_s = MEASURE_S;
    } catch (e) {
      failed = true;
      throw e;
    }
  });

for (const name of NAMES) {
  test(`${name} decodes ≥ ${MIN_FPS} frames/s from each of the 3 others and receives their audio`, () => {
    const p = result.participants[name];
    assert.ok(p && Object.keys(p.tiles).length, 'no measurement (the first test failed)');
    const others = NAMES.filter((n) => n !== name);
    assert.deepEqual(Object.keys(p.tiles).sort(), others, `${name}'s remote tiles`);
    for (const from of others) {
      const t = p.tiles[from];
      assert.ok(t.fps >= MIN_FPS,
        `${name} ← ${from}: ${t.fps} frames/s (${t.frames_in_window} in ${p.window_s} s), want ≥ ${MIN_FPS}`);
      assert.ok(t.audio_packets_start > 0 && t.audio_packets_end > t.audio_packets_start,
        `${name} ← ${from}: audio packets ${t.audio_packets_start} → ${t.audio_packets_end}, want > 0 and growing`);
    }
    assert.deepEqual(p.remote_tiles_showing_avatar, [], `${name}: remote tiles showing an avatar instead of video`);
    assert.deepEqual(p.errors, [], `${name}'s page reported errors`);
  });
}

test('each participant publishes 3 simulcast layers (rid q/h/f), of which q and h encode', () => {
  assert.ok(result.window_s !== null, 'no measurement (the first test failed)');
  for (const name of NAMES) {
    const layers = result.participants[name].publisher_layers || [];
    assert.deepEqual(layers.map((l) => l.rid), ['q', 'h', 'f'], `${name}'s outbound video: ${JSON.stringify(layers)}`);
    const inactive = layers.filter((l) => !l.active).map((l) => l.rid);
    assert.deepEqual(inactive, [], `${name}'s layers ${inactive.join(',')} are inactive: ${JSON.stringify(layers)}`);
    // f may still wait for the bandwidth estimate (at 720p it does for ~20 s); q and h may not.
    const idle = layers.filter((l) => l.rid !== 'f' && l.framesEncoded === 0).map((l) => l.rid);
    assert.deepEqual(idle, [], `${name}'s layers ${idle.join(',')} encode nothing: ${JSON.stringify(layers)}`);
  }
});

test('each participant\'s own tile shows its camera and microphone', () => {
  assert.ok(result.window_s !== null, 'no measurement (the first test failed)');
  for (const name of NAMES) {
    assert.deepEqual(result.participants[name].own_tile, { preview: true, badges: ['mic on', 'cam on'] },
      `${name}'s own tile as drawn (camera preview, mic/cam badges)`);
  }
});

test('each tile shows its participant\'s connection quality, rated and not lost', () => {
  assert.ok(result.window_s !== null, 'no measurement (the first test failed)');
  for (const name of NAMES) {
    const q = result.participants[name].qualities || {};
    assert.deepEqual(Object.keys(q).sort(), NAMES, `${name}'s tiles: ${JSON.stringify(q)}`);
    for (const [who, quality] of Object.entries(q)) {
      assert.ok(['excellent', 'good', 'poor'].includes(quality), `${name}'s tile of ${who} shows ${quality}`);
    }
  }
});

test('a chat message typed on each page reaches the 3 others, named by their sender', { timeout: 60_000 }, async () => {
  assert.ok(result.window_s !== null, 'no meeting (the first test failed)');
  try {
    for (const name of NAMES) {
      await people[name].page.fill('#chat-input', `hello from ${name}`, { timeout: 10_000 });
      await people[name].page.press('#chat-input', 'Enter', { timeout: 10_000 });
    }
    const expected = (name) => NAMES.filter((n) => n !== name).map((n) => `${n}: hello from ${n}`).sort();
    const received = (s) => s.chat.filter((m) => m.from !== 'me').map((m) => `${m.from}: ${m.text}`).sort();
    const got = await Promise.all(NAMES.map((name) => people[name].waitFor('the 3 others\' chat messages',
      (s) => received(s).length >= NAMES.length - 1, CHAT_TIMEOUT_MS)));
    result.chat = {};
    NAMES.forEach((name, i) => {
      result.chat[name] = got[i].chat;
      assert.deepEqual(received(got[i]), expected(name), `${name}'s chat log`);
      assert.deepEqual(got[i].chat.filter((m) => m.from === 'me').map((m) => m.text), [`hello from ${name}`],
        `${name}'s own message in its log`);
    });
  } catch (e) {
    failed = true;
    throw e;
  }
});

test(`after ${LEAVER} leaves, the 3 others each show 3 tiles within ${LEAVE_TIMEOUT_MS / 1000} s`,
  { timeout: 60_000 }, async () => {
    assert.ok(result.window_s !== null, 'no meeting (the first test failed)');
    const stay = NAMES.filter((n) => n !== LEAVER);
    try {
      const clickedAt = Date.now();
      await people[LEAVER].page.click('#leave', { timeout: 10_000 });
      const gone = await people[LEAVER].waitFor('state `left`', (s) => s.state === 'left', 10_000);
      assert.equal(gone.tiles.length, 0, `${LEAVER}'s page still shows tiles after leaving`);

      const expected = (name) => [name, ...stay.filter((n) => n !== name)]
        .map((n) => result.participants[n].identity).sort();
      const after3 = await Promise.all(stay.map((name) => people[name].waitFor(`${LEAVER}'s tile to go`,
        (s) => s.tiles.length === 3 && s.drawn.length === 3, LEAVE_TIMEOUT_MS)));
      result.leave = { who: LEAVER, tiles_gone_ms: Math.round(Date.now() - clickedAt), pages: {} };
      await Promise.all(stay.map((name) => people[name].screenshot('after-leave')));
      stay.forEach((name, i) => {
        const s = after3[i];
        result.leave.pages[name] = { tiles: s.tiles.map((t) => t.name), state: s.state };
        assert.deepEqual(s.tiles.map((t) => t.identity).sort(), expected(name),
          `${name}'s tiles after ${LEAVER} left: ${s.tiles.map((t) => t.name).join(', ')}`);
        assert.deepEqual(s.drawn.map((t) => t.identity).sort(), expected(name), `${name}'s tiles as drawn`);
        const avatars = s.drawn.filter((t) => t.avatar && t.identity !== s.me).map((t) => t.identity);
        assert.deepEqual(avatars, [], `${name}: remote tiles showing an avatar instead of video`);
        assert.equal(s.state, 'joined', `${name} is no longer in the meeting`);
        assert.deepEqual(s.errors, [], `${name}'s page reported errors`);
      });
    } catch (e) {
      failed = true;
      throw e;
    }
  });

function summary() {
  const lines = [`room ${result.room}, camera ${result.video}, window ${result.window_s ?? '-'} s`];
  for (const name of NAMES) {
    const p = result.participants[name];
    if (!p) continue;
    const tiles = Object.entries(p.tiles).map(([from, t]) => `${from}: first frame ${t.first_frame_ms} ms, `
      + `${t.fps} fps @${t.frame_width}px, audio ${t.audio_packets_per_s} pkt/s`);
    lines.push(`${name} (${p.joined_by}): joined in ${p.join_ms} ms; ${tiles.join('; ') || 'no tiles measured'}`);
  }
  if (result.leave) lines.push(`${result.leave.who} left: the others' tiles updated within ${result.leave.tiles_gone_ms} ms`);
  const exceptions = Object.values(people).filter((p) => p.exceptions.length);
  for (const p of exceptions) lines.push(`${p.name}: ${p.exceptions.length} uncaught page exception(s): ${[...new Set(p.exceptions)].join(' | ')}`);
  return lines.join('\n');
}

after(async () => {
  for (const p of Object.values(people)) {
    if (result.participants[p.name]) result.participants[p.name].page_exceptions = p.exceptions.slice();
  }
  console.log(`SFU meeting e2e figures: ${JSON.stringify(result, null, 2)}`);
  console.log(`SFU meeting e2e summary:\n${summary()}`);
  if (failed) {
    await Promise.all(Object.values(people).map((p) => p.screenshot('failed')));
    for (const p of Object.values(people)) {
      if (p.last) console.log(`--- ${p.name} last state: ${JSON.stringify(brief(p.last))}`);
      const tail = p.console.slice(-15);
      if (tail.length) console.log(`--- ${p.name} console (last ${tail.length}) ---\n${tail.join('\n')}`);
    }
  }
  if (OUT_DIR) {
    for (const p of Object.values(people)) await p.saveLogs();
    writeFileSync(join(OUT_DIR, 'meeting-figures.json'), `${JSON.stringify(result, null, 2)}\n`);
  }
  // Leave properly (the server would otherwise wait out the resume window for each).
  await Promise.all(Object.values(people).map((p) => p.page && !p.page.isClosed()
    && p.page.evaluate(() => window.sfuMeeting?.leave()).catch(() => {})));
  if (browser) await browser.close().catch(() => {});
});
