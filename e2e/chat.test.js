// The demo chat, as people use it, in a real headless Chromium: once against `freeim`
// alone (gateway and demo in one process) and once against `freeim demo` on a 2-node
// Redis cluster. Each test leaves screenshots in target/e2e/<deployment>/.
'use strict';

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { AllInOne, Cluster, eventually, launchBrowser, openChat, screenshot } = require('./harness');

/** A bubble with exactly `text` in the open conversation of `page`. */
function bubble(page, text) {
  return page.locator('#messages .msg .bubble').filter({ hasText: text });
}

async function joinChannel(page, chan) {
  await page.fill('#new-channel-name', chan);
  await page.click('#new-channel button[type=submit]');
  await page.locator('#conv-title', { hasText: `# ${chan}` }).waitFor();
  await page.locator(`#channels li.joined[data-chan="${chan}"]`).waitFor();
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** Holds `page`'s pre-connect requests until the returned function is called. */
async function holdPreConnect(page) {
  let release;
  const released = new Promise((r) => (release = r));
  await page.route('**/ws/pre-connect', async (route) => {
    await released;
    await route.continue().catch(() => {}); // the page may be closed by then
  });
  return release;
}

/** The texts of the bubbles of conversation `key` (`dm:<id>`, `chan:<name>`) on `page`. */
function lines(page, key) {
  return page.evaluate((k) => {
    const c = window.freeimDemo.state.convs[k];
    return c ? c.messages.filter((m) => m.kind === 'msg').map((m) => m.text) : [];
  }, key);
}

/** Sends private messages `texts` from `page` (its open conversation) and waits for each receipt. */
async function sayAll(page, texts) {
  for (const text of texts) await say(page, text);
  await eventually('every receipt', async () => (await page.locator('#messages .status[data-status="sending"]').count()) === 0);
}

for (const Deployment of [AllInOne, Cluster]) {
  describe(new Deployment().name, () => {
    let deployment;
    let browser;
    let pages = [];

    const open = async (nick) => {
      const page = await openChat(browser, deployment, nick);
      pages.push(page);
      return page;
    };

    before(async () => {
      deployment = new Deployment(); // assigned first, so `after` stops what did start
      await deployment.start();
      browser = await launchBrowser();
    });

    afterEach(async () => {
      await Promise.all(pages.map((p) => p.close().catch(() => {})));
      pages = [];
    });

    after(async () => {
      await browser?.close();
      await deployment?.stop();
    });

    it('two pages chat in a channel', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await joinChannel(alice, 'lobby');
      await joinChannel(bob, 'lobby');
      await alice.locator('#messages .sys', { hasText: 'Bob joined # lobby' }).waitFor();
      await alice.locator('#channels li[data-chan="lobby"] .members', { hasText: '2' }).waitFor();

      // Markup typed by a person is shown as text, never interpreted.
      const hello = 'Hi Bob <b>bold?</b> & welcome';
      await say(alice, hello);
      await bubble(bob, hello).waitFor();
      await bubble(alice, hello).waitFor();
      assert.equal(await bob.locator('#messages b').count(), 0, 'user text must not become markup');
      assert.equal(await alice.locator('#messages .msg.mine .bubble', { hasText: hello }).count(), 1);
      assert.equal(await bob.locator('#messages .msg.theirs .bubble', { hasText: hello }).count(), 1);
      assert.equal(await bob.locator('#messages .msg.theirs .who', { hasText: 'Alice' }).count(), 1);

      await say(bob, 'Hello Alice! Ça va? Ready for the demo');
      await bubble(alice, 'Hello Alice! Ça va? Ready for the demo').waitFor();

      // A third person, a second channel, and a private message waiting for Alice: the
      // screenshot of Alice's page is the one the README shows (docs/chat.png).
      const carol = await open('Carol');
      await joinChannel(carol, 'random');
      await joinChannel(carol, 'lobby');
      await alice.locator('#channels li[data-chan="lobby"] .members', { hasText: '3' }).waitFor();
      await say(carol, 'Morning both! The gateway restart went fine overnight.');
      await bubble(alice, 'The gateway restart went fine overnight.').waitFor();
      await say(alice, 'Great. Shall we ship it today?');
      await bubble(bob, 'Shall we ship it today?').waitFor();
      await bubble(carol, 'Shall we ship it today?').waitFor();
      await carol.click(`#online li[data-id="${alice.clientId}"] button`);
      await say(carol, 'Psst: lunch after the demo?');
      await carol.locator('#messages .status[data-status="delivered"]').waitFor();
      await alice.locator(`#convs li[data-conv="dm:${carol.clientId}"] .badge`, { hasText: '1' }).waitFor();
      await alice.locator('#channels li[data-chan="random"] .members', { hasText: '1' }).waitFor();
      await alice.locator('#online-count', { hasText: '3' }).waitFor();
      await alice.click('#text'); // the focus ring of the composer, as a person sees it
      await screenshot(alice, deployment, 'chat');
      await screenshot(bob, deployment, 'channel-bob');
    });

    it('a private message shows its receipt on the sender page', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await alice.click(`#online li[data-id="${bob.clientId}"] button`);
      await alice.locator('#conv-title', { hasText: 'Bob' }).waitFor();
      await say(alice, 'psst, a secret');
      await alice.locator('#messages .status[data-status="delivered"]').waitFor();
      assert.equal(await alice.locator('#messages .status').first().textContent(), '✓ delivered');

      await bob.locator(`#convs li[data-conv="dm:${alice.clientId}"] .badge`, { hasText: '1' }).waitFor();
      await bob.click(`#convs li[data-conv="dm:${alice.clientId}"] button`);
      await bubble(bob, 'psst, a secret').waitFor();
      await screenshot(alice, deployment, 'private-delivered-alice');

      await bob.close();
      await alice.locator(`#online li[data-id="${bob.clientId}"]`).waitFor({ state: 'detached' });
      await say(alice, 'are you there?');
      await alice.locator('#messages .status[data-status="offline"]').waitFor();
      assert.equal(await alice.locator('#messages .status[data-status="offline"]').textContent(), 'user offline');
      await screenshot(alice, deployment, 'private-offline-alice');
    });

    it('a broadcast reaches every page', async () => {
      const all = [await open('Ann'), await open('Ben'), await open('Cid')];
      await say(all[1], 'Attention everyone: lunch is ready');
      for (const page of all) await bubble(page, 'Attention everyone: lunch is ready').waitFor();
      await screenshot(all[0], deployment, 'broadcast-ann');
    });

    it('the online list updates when a page closes', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await alice.locator(`#online li[data-id="${bob.clientId}"]`, { hasText: 'Bob' }).waitFor();
      await bob.locator(`#online li[data-id="${alice.clientId}"]`, { hasText: 'Alice' }).waitFor();
      await screenshot(alice, deployment, 'online-before-alice');
      await bob.close();
      await alice.locator(`#online li[data-id="${bob.clientId}"]`).waitFor({ state: 'detached' });
      await alice.locator(`#online li[data-id="${alice.clientId}"]`).waitFor();
      await screenshot(alice, deployment, 'online-after-alice');
    });

    it('pages show the lost connection, reconnect after a gateway restart and receive again', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await joinChannel(alice, 'ops');
      await joinChannel(bob, 'ops');
      await say(alice, 'before the restart');
      await bubble(bob, 'before the restart').waitFor();

      // While the gateway is down, each page says so, and keeps trying.
      await deployment.stopGateways();
      for (const page of [alice, bob]) {
        await page.locator('#conn[data-state="waiting"]', { hasText: 'reconnecting in' }).waitFor();
      }
      await screenshot(bob, deployment, 'gateway-down-bob');
      await deployment.startGateways();
      for (const page of [alice, bob]) {
        // A second successful open, with its channels joined again.
        await page.waitForSelector('body[data-ready="2"]', { timeout: 30000 });
        await page.locator('#conn[data-state="open"]').waitFor();
      }
      // The durable log lives in Redis on a cluster, in the process when all-in-one.
      const lost = deployment instanceof AllInOne;
      for (const page of [alice, bob]) {
        if (lost) await page.locator('#history-notice').waitFor();
        else assert.equal(await page.locator('#history-notice').isVisible(), false);
      }
      await say(alice, 'after the restart');
      await bubble(bob, 'after the restart').waitFor();
      await say(bob, 'still here');
      await bubble(alice, 'still here').waitFor();
      await screenshot(bob, deployment, 'reconnected-bob');
    });

    it('a page that reloads gets every message sent meanwhile, once, in order', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await joinChannel(bob, 'durable');
      await joinChannel(alice, 'durable');
      await alice.click(`#online li[data-id="${bob.clientId}"] button`);
      await alice.locator('#conv-title', { hasText: 'Bob' }).waitFor();
      await sayAll(alice, ['dm 1', 'dm 2']);
      await eventually('the live messages', async () => (await lines(bob, `dm:${alice.clientId}`)).length === 2);

      // Bob reloads; his page cannot connect again until the messages below are sent.
      const release = await holdPreConnect(bob);
      const reloaded = bob.reload({ waitUntil: 'domcontentloaded' });
      await alice.locator(`#online li[data-id="${bob.clientId}"]`).waitFor({ state: 'detached' });
      const missed = ['dm 3', 'dm 4', 'dm 5', 'dm 6', 'dm 7'];
      await sayAll(alice, missed);
      await alice.click('#channels li[data-chan="durable"] .item-main');
      const chanMissed = ['chan 1', 'chan 2', 'chan 3'];
      for (const text of chanMissed) {
        await say(alice, text);
        await bubble(alice, text).waitFor();
      }
      await reloaded;
      release();
      await bob.waitForSelector('body[data-ready]');
      await say(alice, 'chan 4');
      await bubble(alice, 'chan 4').waitFor();

      // The page was reloaded: all it has is what was replayed, then what came live.
      await eventually('the last live line', async () => (await lines(bob, 'chan:durable')).includes('chan 4'));
      assert.deepEqual(await lines(bob, `dm:${alice.clientId}`), missed);
      assert.deepEqual(await lines(bob, 'chan:durable'), [...chanMissed, 'chan 4']);
      assert.equal(await bob.locator('#history-notice').isVisible(), false);
      await bob.click(`#convs li[data-conv="dm:${alice.clientId}"] button`);
      await bubble(bob, 'dm 7').waitFor();
      await screenshot(bob, deployment, 'resumed-after-reload-bob');
    });

    it('a dropped socket gets every message sent meanwhile when it resumes', async () => {
      const alice = await open('Alice');
      const bob = await open('Bob');
      await alice.click(`#online li[data-id="${bob.clientId}"] button`);
      await sayAll(alice, ['one']);
      await eventually('the live message', async () => (await lines(bob, `dm:${alice.clientId}`)).length === 1);

      const release = await holdPreConnect(bob);
      await bob.evaluate(() => window.freeimDemo.im.socket.close());
      await alice.locator(`#online li[data-id="${bob.clientId}"]`).waitFor({ state: 'detached' });
      await sayAll(alice, ['two', 'three', 'four']);
      release();
      await bob.waitForSelector('body[data-ready="2"]', { timeout: 30000 });
      await sayAll(alice, ['five']);
      const all = ['one', 'two', 'three', 'four', 'five'];
      await eventually('the last live message', async () => (await lines(bob, `dm:${alice.clientId}`)).includes('five'));
      assert.deepEqual(await lines(bob, `dm:${alice.clientId}`), all);
      assert.equal(await bob.locator('#history-notice').isVisible(), false);
    });

    it('a page shows a notice when what it missed cannot be recovered', async () => {
      const bob = await open('Bob');
      assert.equal(await bob.locator('#history-notice').isVisible(), false);
      // A position in an epoch the gateway never had: as after Redis restarted empty.
      await bob.evaluate((id) => {
        window.freeimDemo.im.stop();
        sessionStorage.setItem(`freeim-position:${id}`, 'ffffffffffffffff:5');
      }, bob.clientId);
      await bob.reload();
      await bob.locator('#history-notice', { hasText: 'could not be recovered' }).waitFor();
      await bob.locator('#messages .sys.error', { hasText: 'could not be recovered' }).waitFor();
      const position = await bob.evaluate((id) => sessionStorage.getItem(`freeim-position:${id}`), bob.clientId);
      assert.match(position, /^[0-9a-f]{16}:\d+$/);
      assert.notEqual(position.split(':')[0], 'ffffffffffffffff');
      await screenshot(bob, deployment, 'history-lost-bob');
      await bob.click('#history-dismiss');
      await bob.locator('#history-notice').waitFor({ state: 'hidden' });
    });
  });
}
