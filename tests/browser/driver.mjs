// Drives Converse.js in Debian's headless Chromium with playwright-core, one step per command,
// for conformance/test_browser.py. The Python test runs the XMPP side (server, slixmpp peer)
// and decides the order; this script only does what a person would do in the browser.
//
// Protocol: one JSON command per line on stdin, one JSON reply per line on stdout
// ({"ok": true, ...} or {"ok": false, "error": "..."}). Browser console output, page errors
// and failed requests go to stderr, which the test keeps as a log.
//
// Commands:
//   {"cmd": "open", "url": U}                 launch Chromium, load the page
//   {"cmd": "wait_chat"}                      logged in, the chat (from the URL hash) is open
//   {"cmd": "send", "text": T}                type T in the chat and press Enter
//   {"cmd": "wait_message", "text": T}        a chat message with text T is shown
//   {"cmd": "upload", "path": P, "name": N, "mime": M}
//                                             send the file through Converse's upload button;
//                                             replies with the URL the sent message links to
//   {"cmd": "wait_image", "url": U}           the image at U is rendered (downloaded by GET)
//   {"cmd": "messages"}                       the chat's messages (sender, text, links)
//   {"cmd": "network"}                        URLs requested beyond loopback, WebSockets
//                                             opened, POSTs made (BOSH)
//   {"cmd": "screenshot", "path": P}
//   {"cmd": "close"}
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT_MS = Number(process.env.BROWSER_STEP_TIMEOUT_MS || 30000);

// The machine's network is closed: without these, Chromium's background services try to
// reach Google at every start (refused connections, DNS failures). The host resolver rule
// makes every name but the loopback ones fail at once, so the page provably loads nothing
// from the internet (a failed request is logged to stderr).
const ARGS = [
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

let context = null;
let page = null;
let profile = null;
const external = []; // requests the page made to anything but loopback
const websockets = []; // WebSocket URLs the page opened
const posts = []; // URLs the page POSTed to (BOSH)
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]']);

function log(...parts) {
  process.stderr.write(parts.join(' ') + '\n');
}

const commands = {
  async open({ url }) {
    profile = mkdtempSync(join(tmpdir(), 'starling-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: EXECUTABLE,
      headless: true,
      args: ARGS,
      // The server's certificate is self-signed; wss:// and the upload's https:// URLs
      // are reached over real TLS, without verifying the chain.
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 800 },
    });
    context.setDefaultTimeout(TIMEOUT_MS);
    page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => log(`[console.${m.type()}]`, m.text()));
    page.on('pageerror', (e) => log('[pageerror]', e.stack || String(e)));
    page.on('requestfailed', (r) => log('[requestfailed]', r.method(), r.url(), r.failure()?.errorText));
    page.on('request', (r) => {
      const url = new URL(r.url());
      if (/^(https?|wss?):$/.test(url.protocol) && !LOOPBACK.has(url.hostname)) external.push(r.url());
      if (r.method() === 'POST') posts.push(r.url());
    });
    page.on('response', (r) => r.status() >= 400 && log('[http]', r.status(), r.request().method(), r.url()));
    page.on('websocket', (ws) => {
      websockets.push(ws.url());
      log('[websocket] open', ws.url());
      ws.on('close', () => log('[websocket] closed', ws.url()));
    });
    await page.goto(url);
    return { version: context.browser()?.version() ?? null };
  },

  async wait_chat() {
    await page.locator('converse-chat textarea.chat-textarea').waitFor({ state: 'visible' });
    return {};
  },

  async send({ text }) {
    const box = page.locator('converse-chat textarea.chat-textarea');
    await box.fill(text);
    await box.press('Enter');
    await messageWithText(text).waitFor({ state: 'visible' });
    return {};
  },

  async wait_message({ text }) {
    await messageWithText(text).waitFor({ state: 'visible' });
    return {};
  },

  async upload({ path, name, mime }) {
    const before = await page.locator('converse-chat .chat-msg').count();
    // The toolbar's upload button clicks this hidden input; setting its files is what a
    // file chosen in the dialog does.
    await page.locator('converse-chat input.fileupload').setInputFiles({
      name,
      mimeType: mime,
      buffer: readFileSync(path),
    });
    // Converse adds the message at once (with a progress bar), then, once the PUT
    // succeeded, sends it with the GET URL as body and OOB data and renders that URL.
    const sent = page.locator('converse-chat .chat-msg').nth(before);
    const link = sent.locator('a[href^="http"], img[src^="http"]').first();
    await link.waitFor({ state: 'attached' });
    const url = (await link.getAttribute('href')) ?? (await link.getAttribute('src'));
    return { url };
  },

  async wait_image({ url }) {
    const img = page.locator(`converse-chat img.chat-image[src="${url}"]`).first();
    await img.waitFor({ state: 'visible' });
    await page.waitForFunction(
      (el) => el.complete && el.naturalWidth > 0,
      await img.elementHandle(),
    );
    const size = await img.evaluate((el) => [el.naturalWidth, el.naturalHeight]);
    return { size };
  },

  async messages() {
    // What the chat shows, in order: the sender Converse attributes each message to
    // (data-from), whether it is rendered as ours ('me') or theirs ('them'), its text and
    // the http(s) links or images in it.
    const messages = await page.locator('converse-chat .chat-msg').evaluateAll((els) =>
      els.map((el) => ({
        from: el.dataset.from,
        sender: el.querySelector('.chat-msg__content--me') ? 'me' : 'them',
        text: el.querySelector('.chat-msg__text')?.innerText ?? '',
        links: [...el.querySelectorAll('a[href^="http"], img[src^="http"]')].map(
          (a) => a.getAttribute('href') ?? a.getAttribute('src'),
        ),
      })),
    );
    return { messages };
  },

  async network() {
    return { external, websockets, posts };
  },

  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: false });
    return { path };
  },

  async close() {
    await shutdown();
    return {};
  },
};

function messageWithText(text) {
  return page.locator('converse-chat .chat-msg__text', { hasText: text }).first();
}

async function shutdown() {
  if (context) {
    await context.close().catch((e) => log('[close]', String(e)));
    context = null;
  }
  if (profile) {
    rmSync(profile, { recursive: true, force: true });
    profile = null;
  }
}

const input = createInterface({ input: process.stdin });
for await (const line of input) {
  if (!line.trim()) continue;
  let reply;
  try {
    const command = JSON.parse(line);
    const handler = commands[command.cmd];
    if (!handler) throw new Error(`unknown command ${command.cmd}`);
    reply = { ok: true, ...(await handler(command)) };
  } catch (e) {
    reply = { ok: false, error: String(e?.message ?? e) };
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
  if (reply.ok && line.includes('"close"')) break;
}
await shutdown();
