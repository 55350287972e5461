// freeim.js on its own, in Node: frame decoding (golden cases: frame in, event out) and the
// reconnect loop, with a fake WebSocket and a fake pre-connect callback.
'use strict';

const { describe, it, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const FreeIM = require('../src/cli/demo/assets/freeim.js');

describe('decodeFrame', () => {
  const message = { type: 'chanmsg', msg: { content: 'hi' } };
  const cases = [
    // A page sent JSON text: the library serialized it once more.
    ['double JSON', JSON.stringify(JSON.stringify(message)), { kind: 'message', data: message }],
    // A backend sent a plain string, or an object.
    ['string', '"hello"', { kind: 'message', data: 'hello' }],
    ['object', '{"a":1}', { kind: 'message', data: { a: 1 } }],
    ['not JSON', 'plain text', { kind: 'message', data: 'plain text' }],
    [
      'receipt delivered',
      JSON.stringify({ content: JSON.stringify(JSON.stringify(message)), receipt: '发送成功' }),
      { kind: 'receipt', status: 'delivered', delivered: true, text: '发送成功', data: message },
    ],
    [
      'receipt offline',
      '{"content":"\\"hi\\"","receipt":"用户不在线"}',
      { kind: 'receipt', status: 'offline', delivered: false, text: '用户不在线', data: 'hi' },
    ],
    [
      'receipt of another server',
      '{"content":"\\"hi\\"","receipt":"queued"}',
      { kind: 'receipt', status: 'unknown', delivered: false, text: 'queued', data: 'hi' },
    ],
  ];
  for (const [name, frame, want] of cases) {
    it(name, () => assert.deepEqual(FreeIM.decodeFrame(frame), want));
  }
});

/** A WebSocket double: tests open, close and feed it by hand. */
class FakeSocket {
  constructor(url) {
    this.url = url;
    FakeSocket.all.push(this);
  }
  open() {
    this.onopen?.({});
  }
  receive(data) {
    this.onmessage?.({ data });
  }
  drop(code = 1006, reason = '') {
    this.onclose?.({ code, reason });
  }
  close() {
    this.closed = true;
  }
}

describe('the reconnect loop', () => {
  let realSocket;
  beforeEach(() => {
    FakeSocket.all = [];
    realSocket = global.WebSocket;
    global.WebSocket = FakeSocket;
  });
  afterEach(() => {
    global.WebSocket = realSocket;
  });

  const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
  /** Waits (up to 2 s) until the client has opened socket number `n` (from 1). */
  const sockets = async (n) => {
    for (let waited = 0; FakeSocket.all.length < n; waited += 5) {
      assert.ok(waited < 2000, `socket ${n} never opened`);
      await tick(5);
    }
    return FakeSocket.all[n - 1];
  };

  it('fetches a fresh token for every attempt and backs off exponentially', async () => {
    let tokens = 0;
    const asked = [];
    const im = new FreeIM({
      preConnect: async (id) => {
        asked.push(id);
        return { server: `ws://gw/ws?token=t${++tokens}`, websocketId: 42 };
      },
      initialDelay: 10,
      maxDelay: 40,
      jitter: 0,
    });
    const states = [];
    const events = [];
    im.on('state', (s) => states.push(s.state === 'waiting' ? `waiting ${s.delay}` : s.state));
    im.on('open', (e) => events.push(e));
    const messages = [];
    im.on('message', (m) => messages.push(m));
    im.start();
    (await sockets(1)).open();
    FakeSocket.all[0].receive('"hello"');
    // Three failures in a row: 10, 20, 40 ms (capped), each after a fresh pre-connect.
    FakeSocket.all[0].drop(1001, 'shutdown');
    for (let i = 2; i <= 4; i++) (await sockets(i)).drop();
    (await sockets(5)).open();
    im.stop();
    assert.deepEqual(
      FakeSocket.all.map((s) => s.url),
      ['t1', 't2', 't3', 't4', 't5'].map((t) => `ws://gw/ws?token=${t}`)
    );
    assert.deepEqual(asked, [null, 42, 42, 42, 42], 'the id given by the first pre-connect is kept');
    assert.deepEqual(states, [
      'connecting', 'open', 'waiting 10', 'reconnecting', 'waiting 20', 'reconnecting', 'waiting 40',
      'reconnecting', 'waiting 40', 'reconnecting', 'open', 'closed',
    ]);
    assert.deepEqual(events, [{ websocketId: 42, reconnected: false }, { websocketId: 42, reconnected: true }]);
    assert.deepEqual(messages, [{ kind: 'message', data: 'hello', raw: '"hello"' }]);
  });

  it('stops when the business app forces the client offline', async () => {
    const im = new FreeIM({ preConnect: async () => ({ server: 'ws://gw/ws?token=x' }), initialDelay: 1 });
    const states = [];
    im.on('state', (s) => states.push(s.state));
    im.start();
    (await sockets(1)).open();
    FakeSocket.all[0].drop(1001, 'disconnect');
    await tick(20);
    assert.equal(FakeSocket.all.length, 1);
    assert.deepEqual(states, ['connecting', 'open', 'kicked']);
  });

  it('retries when the pre-connect route fails, with jitter inside its bounds', async () => {
    let calls = 0;
    const im = new FreeIM({
      preConnect: async () => {
        if (++calls < 3) throw new Error('HTTP 503');
        return { server: 'ws://gw/ws?token=y' };
      },
      initialDelay: 8,
      jitter: 0.5,
    });
    const delays = [];
    im.on('state', (s) => s.state === 'waiting' && delays.push(s.delay));
    im.start();
    await sockets(1);
    im.stop();
    assert.equal(calls, 3);
    assert.ok(delays[0] >= 4 && delays[0] <= 8 && delays[1] >= 8 && delays[1] <= 16, `delays ${delays}`);
  });
});
