// SFU demo page: publish with WHIP (3-layer simulcast), watch with WHEP.
// Plain JavaScript, no build step, no external resources.

import { waitIceGathering } from '/sdk/room.js';

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $('join-form'), room: $('room'), name: $('name'), publish: $('publish'), watch: $('watch'),
    join: $('join'), leave: $('leave'), error: $('error'), log: $('log'),
    local: $('local'), remote: $('remote'), unmute: $('unmute'),
    pubState: $('pub-state'), subState: $('sub-state'), pubStats: $('pub-stats'), subStats: $('sub-stats'),
  };

  // Simulcast layers, lowest first (rid q/h/f as the server expects).
  const SIMULCAST = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];
  const HTTP_TIMEOUT_MS = 10000;

  // Everything a test (or a curious developer in the console) may want to look at.
  const demo = {
    pubPc: null,
    subPc: null,
    state: 'idle',          // idle | joining | joined | leaving | error
    token: null,
    room: null,
    identity: null,
    sessions: {},           // { whip: absolute Location URL, whep: ... }
    errors: [],             // strings, newest last
    firstFrameAt: null,     // performance.now() (ms since page load) of the first decoded remote frame
    joinStartedAt: null,
    stats: { pub: null, sub: null },
    join: () => join(),
    leave: () => leave(),
  };
  window.sfuDemo = demo;

  let localStream = null;
  let remoteStream = null;
  let statsTimer = null;
  let prevStats = { pub: new Map(), sub: new Map() };

  // ---------- small helpers ----------

  function log(msg, isError = false) {
    const li = document.createElement('li');
    li.textContent = `${(performance.now() / 1000).toFixed(2)}s ${msg}`;
    if (isError) li.className = 'err';
    els.log.append(li);
    while (els.log.childElementCount > 200) els.log.firstElementChild.remove();
    (isError ? console.error : console.log)('[sfu-demo]', msg);
  }

  function showError(msg) {
    demo.errors.push(msg);
    els.error.textContent = demo.errors.slice(-5).join('\n');
    els.error.hidden = false;
    log(msg, true);
  }

  function clearErrors() {
    demo.errors = [];
    els.error.textContent = '';
    els.error.hidden = true;
  }

  function setBadge(el, text, cls) {
    el.textContent = text;
    el.className = `state ${cls}`;
  }

  function badgeClass(state) {
    switch (state) {
      case 'connected': case 'completed': return 'ok';
      case 'new': case 'checking': case 'connecting': case 'gathering': case 'signaling': return 'busy';
      case 'failed': case 'disconnected': case 'closed': case 'error': return 'bad';
      default: return 'idle';
    }
  }

  class HttpError extends Error {
    constructor(what, status, statusText, body) {
      const text = (body || '').trim();
      super(`${what} failed: HTTP ${status} ${statusText}${text ? ` — ${text}` : ''}`);
      this.status = status;
      this.body = text;
    }
  }

  async function http(what, url, opts) {
    let res;
    try {
      res = await fetch(url, { ...opts, signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) });
    } catch (e) {
      throw new Error(`${what} failed: ${e.name === 'TimeoutError' ? 'timed out' : e.message}`);
    }
    if (!res.ok) {
      const body = await res.text().catch(() => '');
      throw new HttpError(what, res.status, res.statusText, body);
    }
    return res;
  }


  function watchPc(pc, badge, label) {
    const update = () => {
      const s = pc.connectionState;
      setBadge(badge, s, badgeClass(s));
      if (s === 'failed') {
        showError(`${label}: connection failed (ICE/DTLS could not reach the server's media address)`);
      }
    };
    pc.addEventListener('connectionstatechange', () => { log(`${label} connection: ${pc.connectionState}`); update(); });
    pc.addEventListener('iceconnectionstatechange', () => log(`${label} ICE: ${pc.iceConnectionState}`));
    update();
  }

  // POST an offer to a WHIP/WHEP endpoint; returns the absolute Location of the session.
  async function signal(kind, pc) {
    setBadge(kind === 'WHIP' ? els.pubState : els.subState, 'gathering', 'busy');
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (!(await waitIceGathering(pc))) log('ICE gathering still running; sending the offer anyway');
    setBadge(kind === 'WHIP' ? els.pubState : els.subState, 'signaling', 'busy');
    const path = `/${kind.toLowerCase()}/${encodeURIComponent(demo.room)}`;
    const res = await http(`${kind} POST ${path}`, path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${demo.token}` },
      body: pc.localDescription.sdp,
    });
    const answer = await res.text();
    const loc = res.headers.get('Location');
    const location = loc ? new URL(loc, window.location.href).href : null;
    if (!location) log(`${kind}: the response has no Location header; Leave cannot end the session`, true);
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    } catch (e) {
      if (location) deleteSession(location, false).catch(() => {});
      throw new Error(`${kind}: the server's SDP answer was rejected by the browser: ${e.message}`);
    }
    log(`${kind} session ${location || '(no Location)'} (HTTP ${res.status})`);
    watchPc(pc, kind === 'WHIP' ? els.pubState : els.subState, kind);
    return location;
  }

  // ---------- publish / watch ----------

  async function publish() {
    log('requesting camera and microphone');
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error(`camera/microphone unavailable: browsers allow them only in a secure context; open `
        + `this page over https:// or http://localhost (this page is ${window.location.origin})`);
    }
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      });
    } catch (e) {
      throw new Error(`camera/microphone unavailable: ${e.name}: ${e.message}`);
    }
    els.local.srcObject = localStream;
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    demo.pubPc = pc;
    for (const track of localStream.getAudioTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [localStream] });
    }
    for (const track of localStream.getVideoTracks()) {
      pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [localStream],
        sendEncodings: SIMULCAST.map((e) => ({ ...e })),
      });
    }
    demo.sessions.whip = await signal('WHIP', pc);
  }

  async function watch() {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    demo.subPc = pc;
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    remoteStream = new MediaStream();
    els.remote.srcObject = remoteStream;
    pc.addEventListener('track', (ev) => {
      log(`receiving ${ev.track.kind}`);
      remoteStream.addTrack(ev.track);
      playRemote();
    });
    watchFirstFrame();
    demo.sessions.whep = await signal('WHEP', pc);
  }

  function playRemote() {
    const p = els.remote.play();
    if (p && p.catch) {
      p.catch((e) => {
        if (e.name !== 'NotAllowedError') return;
        // Autoplay with sound blocked: play muted and offer a button.
        els.remote.muted = true;
        els.remote.play().catch(() => {});
        els.unmute.hidden = false;
      });
    }
  }

  function watchFirstFrame() {
    const v = els.remote;
    const mark = () => {
      if (demo.firstFrameAt === null && v.videoWidth > 0) {
        demo.firstFrameAt = performance.now();
        log(`first remote frame ${v.videoWidth}x${v.videoHeight} after ${(demo.firstFrameAt / 1000).toFixed(2)}s`);
      }
    };
    if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
      v.requestVideoFrameCallback(mark);
    }
    v.addEventListener('loadeddata', mark, { once: true });
    v.addEventListener('resize', mark);
  }

  // ---------- join / leave ----------

  async function join() {
    if (demo.state === 'joining' || demo.state === 'joined') return;
    clearErrors();
    const room = els.room.value.trim();
    const identity = els.name.value.trim();
    const doPublish = els.publish.checked;
    const doWatch = els.watch.checked;
    if (!room || !identity) { showError('Enter a room name and a display name.'); return; }
    if (!doPublish && !doWatch) { showError('Choose publish, watch or both.'); return; }

    demo.state = 'joining';
    demo.room = room;
    demo.identity = identity;
    demo.joinStartedAt = performance.now();
    els.local.closest('figure').hidden = !doPublish;
    els.remote.closest('figure').hidden = !doWatch;
    setFormEnabled(false);
    els.leave.disabled = false;
    log(`joining room "${room}" as "${identity}"`);

    try {
      const res = await http('POST /dev/token', '/dev/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ room, identity }),
      });
      const body = await res.json().catch(() => ({}));
      if (!body.token) throw new Error('POST /dev/token failed: the response has no "token"');
      demo.token = body.token;

      const tasks = [];
      if (doPublish) tasks.push({ run: publish(), undo: stopPublish });
      if (doWatch) tasks.push({ run: watch(), undo: stopWatch });
      const results = await Promise.allSettled(tasks.map((t) => t.run));
      let failures = 0;
      results.forEach((r, i) => {
        if (r.status !== 'rejected') return;
        failures += 1;
        showError(r.reason && r.reason.message ? r.reason.message : String(r.reason));
        tasks[i].undo(); // the other half (if any) keeps running
      });
      if (failures === results.length) throw null; // everything failed: already reported
      demo.state = 'joined';
      startStats();
    } catch (e) {
      if (e) showError(e.message || String(e));
      demo.state = 'error';
      await teardown();
      setFormEnabled(true);
      els.leave.disabled = true;
    }
  }

  async function leave() {
    if (demo.state === 'idle' || demo.state === 'leaving') return;
    demo.state = 'leaving';
    log('leaving');
    await teardown();
    demo.state = 'idle';
    setFormEnabled(true);
    els.leave.disabled = true;
  }

  function stopPublish() {
    if (demo.pubPc) demo.pubPc.close();
    demo.pubPc = null;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    els.local.srcObject = null;
    setBadge(els.pubState, 'error', 'bad');
    els.pubStats.textContent = '—';
  }

  function stopWatch() {
    if (demo.subPc) demo.subPc.close();
    demo.subPc = null;
    remoteStream = null;
    els.remote.srcObject = null;
    setBadge(els.subState, 'error', 'bad');
    els.subStats.textContent = '—';
  }

  function deleteSession(url, keepalive) {
    return fetch(url, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${demo.token}` },
      keepalive,
      signal: keepalive ? undefined : AbortSignal.timeout(3000),
    });
  }

  async function teardown() {
    stopStats();
    const dels = Object.entries(demo.sessions).filter(([, url]) => url).map(async ([kind, url]) => {
      try {
        const res = await deleteSession(url, false);
        log(`${kind.toUpperCase()} DELETE: HTTP ${res.status}`, !res.ok);
      } catch (e) {
        log(`${kind.toUpperCase()} DELETE failed: ${e.message}`, true);
      }
    });
    await Promise.all(dels);
    demo.sessions = {};
    for (const pc of [demo.pubPc, demo.subPc]) if (pc) pc.close();
    demo.pubPc = null;
    demo.subPc = null;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    remoteStream = null;
    els.local.srcObject = null;
    els.remote.srcObject = null;
    els.unmute.hidden = true;
    els.local.closest('figure').hidden = false;
    els.remote.closest('figure').hidden = false;
    setBadge(els.pubState, 'idle', 'idle');
    setBadge(els.subState, 'idle', 'idle');
    els.pubStats.textContent = '—';
    els.subStats.textContent = '—';
  }

  function setFormEnabled(on) {
    for (const el of [els.room, els.name, els.publish, els.watch, els.join]) el.disabled = !on;
  }

  // ---------- stats ----------

  function rate(prevMap, id, now, value) {
    const prev = prevMap.get(id);
    prevMap.set(id, { t: now, v: value });
    if (!prev || now <= prev.t) return null;
    return ((value - prev.v) * 1000) / (now - prev.t);
  }

  const kbps = (bytesPerSec) => (bytesPerSec === null ? '…' : `${((bytesPerSec * 8) / 1000).toFixed(0)} kbit/s`);

  async function collectSub(pc) {
    const report = await pc.getStats();
    const out = { video: null, audio: null };
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const br = rate(prevStats.sub, `${s.id}:bytes`, s.timestamp, s.bytesReceived || 0);
      const pr = rate(prevStats.sub, `${s.id}:pkts`, s.timestamp, s.packetsReceived || 0);
      const common = {
        packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0,
        bytesReceived: s.bytesReceived || 0, bitrate: br === null ? null : br * 8, packetRate: pr,
      };
      if (s.kind === 'video') {
        out.video = {
          ...common, framesDecoded: s.framesDecoded || 0, framesPerSecond: s.framesPerSecond || 0,
          frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
        };
      } else if (s.kind === 'audio') {
        out.audio = common;
      }
    });
    return out;
  }

  async function collectPub(pc) {
    const report = await pc.getStats();
    const layers = [];
    let audio = null;
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      const br = rate(prevStats.pub, `${s.id}:bytes`, s.timestamp, s.bytesSent || 0);
      if (s.kind === 'video') {
        layers.push({
          rid: s.rid || '', active: s.active !== false, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
          framesPerSecond: s.framesPerSecond || 0, bitrate: br === null ? null : br * 8,
          qualityLimitationReason: s.qualityLimitationReason || 'none',
        });
      } else if (s.kind === 'audio') {
        audio = { packetsSent: s.packetsSent || 0, bitrate: br === null ? null : br * 8 };
      }
    });
    const order = { q: 0, h: 1, f: 2 };
    layers.sort((a, b) => (order[a.rid] ?? 9) - (order[b.rid] ?? 9));
    return { layers, audio };
  }

  async function updateStats() {
    try {
      if (demo.subPc) {
        const sub = await collectSub(demo.subPc);
        demo.stats.sub = sub;
        const v = sub.video;
        const a = sub.audio;
        const vs = v
          ? `video ${v.frameWidth}x${v.frameHeight} ${v.framesPerSecond.toFixed(0)} fps · ${kbps(v.bitrate === null ? null : v.bitrate / 8)}`
            + ` · ${v.packetsReceived} pkts (${v.packetsLost} lost) · ${v.framesDecoded} frames`
          : 'video: waiting';
        const as = a
          ? `audio ${kbps(a.bitrate === null ? null : a.bitrate / 8)} · ${a.packetsReceived} pkts (${a.packetsLost} lost)`
          : 'audio: waiting';
        els.subStats.textContent = `${vs}\n${as}`;
        if (demo.firstFrameAt === null && v && v.framesDecoded > 0) demo.firstFrameAt = performance.now();
      }
      if (demo.pubPc) {
        const pub = await collectPub(demo.pubPc);
        demo.stats.pub = pub;
        const lines = pub.layers.map((l) => {
          const rid = (l.rid || '-').padEnd(2);
          if (!l.active) return `${rid}inactive (not negotiated)`;
          if (!l.frameWidth) return `${rid}not sending${l.qualityLimitationReason !== 'none' ? ` · limited: ${l.qualityLimitationReason}` : ''}`;
          return `${rid}${l.frameWidth}x${l.frameHeight} ${l.framesPerSecond.toFixed(0)} fps`
            + ` · ${kbps(l.bitrate === null ? null : l.bitrate / 8)}`
            + `${l.qualityLimitationReason !== 'none' ? ` · limited: ${l.qualityLimitationReason}` : ''}`;
        });
        if (pub.audio) lines.push(`audio ${kbps(pub.audio.bitrate === null ? null : pub.audio.bitrate / 8)} · ${pub.audio.packetsSent} pkts`);
        els.pubStats.textContent = lines.join('\n') || 'sending: waiting';
      }
    } catch (e) {
      log(`stats: ${e.message}`, true);
    }
  }

  function startStats() {
    stopStats();
    prevStats = { pub: new Map(), sub: new Map() };
    statsTimer = setInterval(updateStats, 1000);
    updateStats();
  }

  function stopStats() {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
  }

  // ---------- wiring ----------

  els.form.addEventListener('submit', (ev) => { ev.preventDefault(); join(); });
  els.leave.addEventListener('click', () => leave());
  els.unmute.addEventListener('click', () => {
    els.remote.muted = false;
    els.remote.play().catch(() => {});
    els.unmute.hidden = true;
  });

  // Best effort on tab close: keepalive DELETEs outlive the page.
  window.addEventListener('pagehide', () => {
    for (const url of Object.values(demo.sessions)) {
      if (url) { try { deleteSession(url, true); } catch (_) { /* page is going away */ } }
    }
  });

  const params = new URLSearchParams(window.location.search);
  const flag = (name, dflt) => {
    const v = params.get(name);
    if (v === null) return dflt;
    return !['0', 'false', 'no', 'off', ''].includes(v.toLowerCase());
  };
  if (params.get('room')) els.room.value = params.get('room');
  els.name.value = params.get('name') || `guest-${Math.random().toString(36).slice(2, 6)}`;
  els.publish.checked = flag('publish', true);
  els.watch.checked = flag('watch', true);
  if (flag('autojoin', false)) join();
})();
