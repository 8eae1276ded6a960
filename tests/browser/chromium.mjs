// What the browser test files share: the server's URL, the output directory, and how they
// start Debian's Chromium (headless, fake camera and microphone, no mDNS host candidates).
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));

export const SFU_URL = (process.env.SFU_URL || '').replace(/\/+$/, '');
export const OUT_DIR = process.env.OUT_DIR || '';
export const CHROMIUM = process.env.CHROMIUM || join(HERE, 'chromium.sh');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Chromium's switches: the common ones, then a test's own (`extra`), then those that must
// come last (`last`; of several --disable-features only the last counts, and chromium.sh
// merges the last one with Playwright's own list).
export function chromiumArgs({ extra = [], last = [] } = {}) {
  return [
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    ...extra,
    // getUserMedia needs a secure context; the server is plain http on a non-loopback address.
    ...(SFU_URL ? [`--unsafely-treat-insecure-origin-as-secure=${new URL(SFU_URL).origin}`] : []),
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    ...last,
  ];
}
