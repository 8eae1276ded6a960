// Real-browser end-to-end test of the SFU through its WHIP/WHEP demo page (/broadcast).
//
// One publisher page (camera + mic, 3-layer simulcast, WHIP) and two subscriber pages (WHEP),
// each in its own browser context of Debian's Chromium, driven by playwright-core. Subscriber A
// joins before the publisher (it must get the publisher when it appears), subscriber B after.
// Figures come from RTCPeerConnection.getStats() and are printed as JSON.
//
// Run through run.sh, which provides the network namespace and the server. Environment:
//   SFU_URL      base URL of `control dev`, e.g. http://10.203.0.1:34567   (required)
//   DURATION_S   length of the measured run in seconds (default 20)
//   OUT_DIR      where screenshots and page logs go (default: none written)
//   CHROMIUM     Chromium executable (default: ./chromium.sh, which runs /usr/bin/chromium)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, OUT_DIR, SFU_URL, chromiumArgs, sleep } from './chromium.mjs';

const DURATION_S = Number(process.env.DURATION_S || 20);

// Thresholds.
const MIN_FPS = 5;               // decoded video frames per second, per subscriber
const MIN_AUDIO_PPS = 25;        // received audio packets per second, per subscriber (Opus: 50)
const WARMUP_S = 3;              // after every subscriber decoded its first frame
const CONNECT_TIMEOUT_MS = 20_000;
const FIRST_FRAME_TIMEOUT_MS = 25_000;

const CHROMIUM_ARGS = chromiumArgs();


// Runs inside the page: a plain-object snapshot of the demo page's peer connections.
async function pageSnapshot() {
  const d = window.sfuDemo;
  const snap = {
    now: performance.now(),
    state: d ? d.state : 'no window.sfuDemo',
    errors: d ? d.errors.slice() : [],
    firstFrameAt: d ? d.firstFrameAt : null,
    pub: null,
    sub: null,
  };
  if (!d) return snap;
  if (d.pubPc) {
    const pub = { connectionState: d.pubPc.connectionState, layers: [], audio: null };
    (await d.pubPc.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      if (s.kind === 'video') {
        pub.layers.push({
          rid: s.rid || '', active: s.active !== false, timestamp: s.timestamp,
          frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
          framesPerSecond: s.framesPerSecond || 0, framesEncoded: s.framesEncoded || 0,
          bytesSent: s.bytesSent || 0, packetsSent: s.packetsSent || 0,
          qualityLimitationReason: s.qualityLimitationReason || 'none',
          targetBitrate: s.targetBitrate || 0,
        });
      } else if (s.kind === 'audio') {
        pub.audio = { packetsSent: s.packetsSent || 0, bytesSent: s.bytesSent || 0 };
      }
    });
    (await d.pubPc.getStats()).forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        pub.availableOutgoingBitrate = s.availableOutgoingBitrate || 0;
      }
    });
    snap.pub = pub;
  }
  if (d.subPc) {
    const sub = { connectionState: d.subPc.connectionState, video: null, audio: null };
    (await d.subPc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const common = {
        timestamp: s.timestamp, packetsReceived: s.packetsReceived || 0,
        packetsLost: s.packetsLost || 0, bytesReceived: s.bytesReceived || 0,
      };
      if (s.kind === 'video') {
        sub.video = {
          ...common, framesDecoded: s.framesDecoded || 0, framesPerSecond: s.framesPerSecond || 0,
          frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
          keyFramesDecoded: s.keyFramesDecoded || 0, pliCount: s.pliCount || 0, nackCount: s.nackCount || 0,
        };
      } else if (s.kind === 'audio') {
        sub.audio = common;
      }
    });
    snap.sub = sub;
  }
  return snap;
}

function demoUrl(params) {
  const q = new URLSearchParams({ autojoin: '1', ...params });
  return `${SFU_URL}/broadcast?${q}`;
}

class Peer {
  constructor(browser, name, params) {
    this.browser = browser;
    this.name = name;
    this.params = params;
    this.console = [];
  }

  async open() {
    this.context = await this.browser.newContext({
      permissions: ['camera', 'microphone'],
      viewport: { width: 1200, height: 800 },
    });
    this.page = await this.context.newPage();
    this.page.on('console', (m) => this.console.push(`[${m.type()}] ${m.text()}`));
    this.page.on('pageerror', (e) => this.console.push(`[pageerror] ${e.message}`));
    this.page.on('crash', () => this.console.push('[crash] page crashed'));
    this.loadStartedWall = Date.now();
    const res = await this.page.goto(demoUrl(this.params), { waitUntil: 'load', timeout: 15_000 });
    if (!res || !res.ok()) {
      throw new Error(`${this.name}: GET / → ${res ? `HTTP ${res.status()}` : 'no response'}`);
    }
  }

  snapshot() {
    return this.page.evaluate(pageSnapshot);
  }

  // Polls until pred(snapshot) is true; fails early when the page reports an error.
  async waitFor(what, pred, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let snap;
    for (;;) {
      snap = await this.snapshot();
      if (pred(snap)) return snap;
      if (snap.errors.length) {
        throw new Error(`${this.name}: page error while waiting for ${what}: ${snap.errors.join(' | ')}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`${this.name}: timed out after ${timeoutMs / 1000}s waiting for ${what}; `
          + `last state: ${JSON.stringify(brief(snap))}`);
      }
      await sleep(200);
    }
  }

  async saveArtifacts(dir) {
    if (!dir || !this.page) return;
    try {
      await this.page.screenshot({ path: join(dir, `${this.name}.png`), timeout: 5000 });
    } catch (e) {
      this.console.push(`[test] screenshot failed: ${e.message}`);
    }
    writeFileSync(join(dir, `${this.name}.console.log`), `${this.console.join('\n')}\n`);
  }
}

function brief(snap) {
  return {
    state: snap.state, errors: snap.errors, pub: snap.pub && snap.pub.connectionState,
    sub: snap.sub && snap.sub.connectionState,
    framesDecoded: snap.sub && snap.sub.video ? snap.sub.video.framesDecoded : undefined,
    audioPackets: snap.sub && snap.sub.audio ? snap.sub.audio.packetsReceived : undefined,
  };
}

const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

// ---------------------------------------------------------------------------------------------

const ROOM = `e2e-${Date.now().toString(36)}`;
let browser;
const peers = {};
const result = { room: ROOM, server: SFU_URL, durationS: null, subscribers: {}, publisher: null };
let setupError = null;

test('publisher and two subscribers join the room and video flows', { timeout: 120_000 }, async () => {
  assert.ok(SFU_URL, 'SFU_URL is not set (run the test through run.sh)');
  if (OUT_DIR) mkdirSync(OUT_DIR, { recursive: true });
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000, // Playwright gives each launch a fresh temporary --user-data-dir
    });

    peers.subA = new Peer(browser, 'subscriber-a', { room: ROOM, name: 'sub-a', publish: '0', watch: '1' });
    peers.pub = new Peer(browser, 'publisher', { room: ROOM, name: 'pub', publish: '1', watch: '0' });
    peers.subB = new Peer(browser, 'subscriber-b', { room: ROOM, name: 'sub-b', publish: '0', watch: '1' });

    // Subscriber A first: it watches an empty room and must get the publisher when it appears.
    await peers.subA.open();
    await peers.subA.waitFor('WHEP session', (s) => s.state === 'joined', CONNECT_TIMEOUT_MS);

    await peers.pub.open();
    const pubUp = await peers.pub.waitFor('publisher connected',
      (s) => s.pub && s.pub.connectionState === 'connected', CONNECT_TIMEOUT_MS);
    const pubConnectedWall = Date.now();
    result.publisherConnectMs = Math.round(pubUp.now);

    await peers.subB.open();

    // Both subscribers must decode video.
    const firstFrames = await Promise.all(['subA', 'subB'].map((k) => peers[k].waitFor('first decoded video frame',
      (s) => s.sub && s.sub.video && s.sub.video.framesDecoded > 0, FIRST_FRAME_TIMEOUT_MS)));
    ['subA', 'subB'].forEach((k, i) => {
      const s = firstFrames[i];
      result.subscribers[k] = {
        joinMs: Math.round(s.firstFrameAt ?? s.now), // page load → first decoded frame
        joinedBeforePublisher: k === 'subA',
      };
    });

    await sleep(WARMUP_S * 1000);
    const t0 = {};
    for (const k of ['subA', 'subB']) t0[k] = await peers[k].snapshot();

    // Measure until the run has lasted DURATION_S since the publisher connected, and at least
    // 10 s of window, so the publisher is past its bandwidth ramp-up when we look at it.
    const elapsed = (Date.now() - pubConnectedWall) / 1000;
    const windowS = Math.max(10, DURATION_S - elapsed);
    await sleep(windowS * 1000);

    for (const k of ['subA', 'subB']) {
      const a = t0[k];
      const b = await peers[k].snapshot();
      const dt = (b.sub.video.timestamp - a.sub.video.timestamp) / 1000;
      const dta = b.sub.audio && a.sub.audio ? (b.sub.audio.timestamp - a.sub.audio.timestamp) / 1000 : dt;
      const v = b.sub.video;
      const frames = v.framesDecoded - a.sub.video.framesDecoded;
      const audioPkts = b.sub.audio && a.sub.audio ? b.sub.audio.packetsReceived - a.sub.audio.packetsReceived : 0;
      Object.assign(result.subscribers[k], {
        windowS: round(dt, 2),
        connectionState: b.sub.connectionState,
        framesDecoded: v.framesDecoded,
        framesDecodedInWindow: frames,
        fps: round(frames / dt),
        videoKbps: Math.round(((v.bytesReceived - a.sub.video.bytesReceived) * 8) / dt / 1000),
        videoPacketsReceived: v.packetsReceived,
        videoPacketsLost: v.packetsLost,
        resolution: `${v.frameWidth}x${v.frameHeight}`,
        keyFramesDecoded: v.keyFramesDecoded,
        pliSent: v.pliCount,
        nackSent: v.nackCount,
        audioPacketsReceived: b.sub.audio ? b.sub.audio.packetsReceived : 0,
        audioPacketsInWindow: audioPkts,
        audioPacketsPerS: round(audioPkts / dta),
        audioPacketsLost: b.sub.audio ? b.sub.audio.packetsLost : null,
        pageErrors: b.errors,
      });
    }

    // Publisher: per-rid figures over the last 3 s.
    const p0 = await peers.pub.snapshot();
    await sleep(3000);
    const p1 = await peers.pub.snapshot();
    const layers = p1.pub.layers.map((l) => {
      const prev = p0.pub.layers.find((x) => x.rid === l.rid);
      const dt = prev ? (l.timestamp - prev.timestamp) / 1000 : 0;
      return {
        rid: l.rid, active: l.active, frameWidth: l.frameWidth, frameHeight: l.frameHeight,
        fps: round(l.framesPerSecond), kbps: prev && dt > 0 ? Math.round(((l.bytesSent - prev.bytesSent) * 8) / dt / 1000) : null,
        targetKbps: Math.round(l.targetBitrate / 1000), qualityLimitationReason: l.qualityLimitationReason,
      };
    });
    const order = { q: 0, h: 1, f: 2 };
    layers.sort((a, b) => (order[a.rid] ?? 9) - (order[b.rid] ?? 9));
    result.publisher = {
      connectionState: p1.pub.connectionState,
      secondsSinceConnected: round((Date.now() - pubConnectedWall) / 1000),
      availableOutgoingKbps: p1.pub.availableOutgoingBitrate ? Math.round(p1.pub.availableOutgoingBitrate / 1000) : null,
      audioPacketsSent: p1.pub.audio ? p1.pub.audio.packetsSent : null,
      layers,
      pageErrors: p1.errors,
    };
    result.durationS = round((Date.now() - pubConnectedWall) / 1000);
  } catch (e) {
    setupError = e;
    throw e;
  } finally {
    console.log(`SFU browser e2e figures: ${JSON.stringify(result, null, 2)}`);
  }
});

after(async () => {
  if (OUT_DIR) {
    for (const p of Object.values(peers)) await p.saveArtifacts(OUT_DIR);
    writeFileSync(join(OUT_DIR, 'figures.json'), `${JSON.stringify(result, null, 2)}\n`);
  }
  if (setupError) {
    for (const p of Object.values(peers)) {
      const tail = p.console.slice(-15);
      if (tail.length) console.log(`--- ${p.name} console (last ${tail.length}) ---\n${tail.join('\n')}`);
    }
  }
  if (browser) await browser.close().catch(() => {});
});

for (const [k, label] of [['subA', 'subscriber A (joined before the publisher)'], ['subB', 'subscriber B (joined after)']]) {
  test(`${label} decodes ≥ ${MIN_FPS} video frames/s`, () => {
    const s = result.subscribers[k];
    assert.ok(s && s.fps !== undefined, 'no measurement (the first test failed)');
    assert.ok(s.fps >= MIN_FPS, `${k}: ${s.fps} frames/s decoded (${s.framesDecodedInWindow} in ${s.windowS} s), want ≥ ${MIN_FPS}`);
  });
  test(`${label} receives ≥ ${MIN_AUDIO_PPS} audio packets/s`, () => {
    const s = result.subscribers[k];
    assert.ok(s && s.audioPacketsPerS !== undefined, 'no measurement (the first test failed)');
    assert.ok(s.audioPacketsPerS >= MIN_AUDIO_PPS,
      `${k}: ${s.audioPacketsPerS} audio packets/s (${s.audioPacketsInWindow} in ${s.windowS} s), want ≥ ${MIN_AUDIO_PPS}`);
  });
}

test('publisher sends 3 simulcast layers (rid q/h/f)', () => {
  const p = result.publisher;
  assert.ok(p, 'no measurement (the first test failed)');
  assert.deepEqual(p.layers.map((l) => l.rid), ['q', 'h', 'f'], `outbound video streams: ${JSON.stringify(p.layers)}`);
  const inactive = p.layers.filter((l) => !l.active).map((l) => l.rid);
  assert.deepEqual(inactive, [], `layers ${inactive.join(',')} inactive: the answer did not accept 3-layer simulcast`);
});

test('publisher\'s highest active layer is not limited by bandwidth after ramp-up', () => {
  const p = result.publisher;
  assert.ok(p, 'no measurement (the first test failed)');
  const active = p.layers.filter((l) => l.active);
  assert.ok(active.length > 0, 'no active video layer');
  const top = active[active.length - 1];
  assert.notEqual(top.qualityLimitationReason, 'bandwidth',
    `layer ${top.rid} (${top.frameWidth}x${top.frameHeight}, ${top.kbps} kbit/s, `
    + `available ${p.availableOutgoingKbps} kbit/s) is bandwidth-limited ${p.secondsSinceConnected} s after connecting`);
});
