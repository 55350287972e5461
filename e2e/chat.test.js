// The demo chat, as people use it, in a real headless Chromium: once against `freeim`
// alone (gateway and demo in one process) and once against `freeim demo` on a 2-node
// Redis cluster. Each test leaves screenshots in target/e2e/<deployment>/.
'use strict';

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { AllInOne, Cluster, launchBrowser, openChat, screenshot } = require('./harness');

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
      await say(alice, 'after the restart');
      await bubble(bob, 'after the restart').waitFor();
      await say(bob, 'still here');
      await bubble(alice, 'still here').waitFor();
      await screenshot(bob, deployment, 'reconnected-bob');
    });
  });
}
