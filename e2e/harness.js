// The browser tests' kit: free ports, the freeim binary and redis-server as child processes,
// the two deployments under test, and Debian's headless Chromium driven by playwright-core.
//
// FREEIM_BIN: the binary under test (default: target/release/freeim, what scripts/test.sh
// builds). Screenshots and process logs go to target/e2e/<deployment>/.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..');
const FREEIM_BIN = process.env.FREEIM_BIN || path.join(ROOT, 'target/release/freeim');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT = path.join(ROOT, 'target/e2e');
/** How long anything that should happen may take. */
const WAIT_MS = 10000;

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** A free TCP port on 127.0.0.1 (bound and released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns true, or fails after WAIT_MS. */
async function eventually(what, check, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Empties `dir` (screenshots and logs of the previous run), creating it when missing. */
function fresh(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
}

/** A child process whose output goes to a log file under `dir`. */
class Child {
  constructor(dir, name, command, args) {
    this.name = name;
    this.command = command;
    this.args = args;
    this.logPath = path.join(dir, `${name}.log`);
  }

  start() {
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(this.command, this.args, { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: 'info' } });
    fs.closeSync(log);
    children.add(this.proc);
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    this.exited.then(() => children.delete(this.proc));
    return this;
  }

  /** SIGTERM (a graceful stop), then SIGKILL if it is still there after the drain time. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 12000);
    await this.exited;
    clearTimeout(timer);
  }
}

async function httpOk(url) {
  const res = await fetch(url);
  return res.ok;
}

/** `freeim` alone: gateway and demo in one process, on free ports. */
class AllInOne {
  constructor() {
    this.name = 'all-in-one';
    this.dir = path.join(OUT, this.name);
  }

  async start() {
    fresh(this.dir);
    const [web, gateway] = [await freePort(), await freePort()];
    this.url = `http://127.0.0.1:${web}/`;
    this.process = new Child(this.dir, 'freeim', FREEIM_BIN, [
      '--listen',
      `127.0.0.1:${web}`,
      '--gateway',
      `127.0.0.1:${gateway}`,
    ]);
    await this.boot();
    return this;
  }

  async boot() {
    this.process.start();
    await eventually(`${this.url} (see ${this.process.logPath})`, () => httpOk(this.url));
  }

  /** Stops the gateway: here, the whole process (the page's routes go with it). */
  async stopGateways() {
    await this.process.stop();
  }

  async startGateways() {
    await this.boot();
  }

  async stop() {
    await this.process.stop();
  }
}

/** `freeim demo` on a 2-node cluster: redis-server, two `freeim server`, one `freeim demo`. */
class Cluster {
  constructor() {
    this.name = 'cluster';
    this.dir = path.join(OUT, this.name);
  }

  async start() {
    fresh(this.dir);
    const redisPort = await freePort();
    const redisUrl = `redis://127.0.0.1:${redisPort}/0`;
    this.redis = new Child(this.dir, 'redis', 'redis-server', [
      '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    ]).start();
    await eventually('redis-server', () => portOpen(redisPort));
    const servers = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
    this.nodes = servers.map((server, i) =>
      new Child(this.dir, `node${i + 1}`, FREEIM_BIN, [
        'server', '--redis', redisUrl, '--server', server, '--servers', servers.join(','), '--threads', '1',
      ])
    );
    this.healthz = servers.map((s) => `http://${s}/healthz`);
    await Promise.all(this.nodes.map((node, i) => this.bootNode(i)));
    const web = await freePort();
    this.url = `http://127.0.0.1:${web}/`;
    this.demo = new Child(this.dir, 'demo', FREEIM_BIN, [
      'demo', '--redis', redisUrl, '--servers', servers.join(','), '--listen', `127.0.0.1:${web}`,
    ]).start();
    await eventually(`${this.url} (see ${this.demo.logPath})`, () => httpOk(this.url));
    return this;
  }

  async bootNode(i) {
    this.nodes[i].start();
    await eventually(`gateway ${this.healthz[i]}`, () => httpOk(this.healthz[i]));
  }

  /** Stops every gateway node (the demo app and Redis stay up). */
  async stopGateways() {
    await Promise.all(this.nodes.map((node) => node.stop()));
  }

  async startGateways() {
    await Promise.all(this.nodes.map((node, i) => this.bootNode(i)));
  }

  async stop() {
    await this.demo?.stop();
    await Promise.all((this.nodes || []).map((n) => n.stop()));
    await this.redis?.stop();
  }
}

function portOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

/** Headless Chromium with a fresh profile; each page is a tab of its own. */
async function launchBrowser() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'freeim-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1100, height: 680 },
  });
  context.setDefaultTimeout(WAIT_MS);
  return {
    context,
    async close() {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Opens the chat as `nick` and waits until it is connected and has its lists. */
async function openChat(browser, deployment, nick) {
  const page = await browser.context.newPage();
  page.on('pageerror', (e) => console.error(`[${nick}] page error: ${e.message}`));
  await page.goto(`${deployment.url}?nick=${encodeURIComponent(nick)}`);
  await page.waitForSelector('body[data-ready]');
  page.nick = nick;
  page.clientId = await page.evaluate(() => window.freeimDemo.state.id);
  return page;
}

/** Saves a screenshot of `page` as target/e2e/<deployment>/<name>.png. */
async function screenshot(page, deployment, name) {
  await page.screenshot({ path: path.join(deployment.dir, `${name}.png`) });
}

module.exports = { AllInOne, Cluster, FREEIM_BIN, WAIT_MS, eventually, freePort, launchBrowser, openChat, screenshot, sleep };
