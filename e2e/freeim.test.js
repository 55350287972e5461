// freeim.js on its own, in Node: frame decoding (golden cases: frame in, event out), the
// reconnect loop and durable sockets, with a fake WebSocket and a fake pre-connect callback.
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

/** Installs FakeSocket as the global WebSocket around each test of the enclosing suite. */
function useFakeSockets() {
  let realSocket;
  beforeEach(() => {
    FakeSocket.all = [];
    realSocket = global.WebSocket;
    global.WebSocket = FakeSocket;
  });
  afterEach(() => {
    global.WebSocket = realSocket;
  });
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** Waits (up to 2 s) until the client has opened socket number `n` (from 1). */
async function sockets(n) {
  for (let waited = 0; FakeSocket.all.length < n; waited += 5) {
    assert.ok(waited < 2000, `socket ${n} never opened`);
    await tick(5);
  }
  return FakeSocket.all[n - 1];
}

describe('the reconnect loop', () => {
  useFakeSockets();

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

describe('durable sockets', () => {
  useFakeSockets();
  /** sessionStorage's interface over a Map. */
  const memoryStorage = (entries = []) => {
    const map = new Map(entries);
    return { map, getItem: (k) => (map.has(k) ? map.get(k) : null), setItem: (k, v) => map.set(k, String(v)) };
  };
  const E = '3f9c2a7b1e4d8c60';
  const client = (storage, more = {}) => {
    let tokens = 0;
    const im = new FreeIM({
      preConnect: async () => ({ server: `ws://gw/ws?token=t${++tokens}`, websocketId: 2 }),
      durable: true,
      storage,
      initialDelay: 1,
      jitter: 0,
      ...more,
    });
    const seen = [];
    for (const event of ['message', 'receipt', 'historylost']) im.on(event, (e) => seen.push([event, e]));
    return { im, seen };
  };

  it('follows the worked example of PROTOCOL.md, across a reconnect', async () => {
    const storage = memoryStorage();
    const { im, seen } = client(storage);
    im.start();
    const first = await sockets(1);
    assert.equal(first.url, 'ws://gw/ws?token=t1&resume=');
    first.open();
    first.receive(`{"t":"hello","e":"${E}","o":41,"recovered":false}`);
    first.receive('{"o":42,"d":"hi"}');
    first.receive('{"d":"yo"}');
    first.receive('{"t":"pos","o":44}');
    first.receive('{"t":"shiny-new-control-frame","o":99}');
    assert.equal(storage.map.get('freeim-position:2'), `${E}:44`);
    first.drop();
    const second = await sockets(2);
    assert.equal(second.url, `ws://gw/ws?token=t2&resume=${E}:44`);
    second.open();
    second.receive(`{"t":"hello","e":"${E}","o":47,"recovered":true}`);
    assert.equal(im.position, `${E}:44`, 'a recovered hello keeps the position');
    second.receive('{"o":45,"d":{"a":1}}');
    second.receive('{"o":47,"d":"are you there?"}');
    second.receive('{"t":"pos","o":47}');
    second.receive('{"d":{"content":"\\"hi\\"","receipt":"发送成功"}}');
    assert.equal(im.position, `${E}:47`, 'a receipt has no offset');
    second.receive('{"o":48,"d":"back"}');
    im.stop();
    assert.equal(storage.map.get('freeim-position:2'), `${E}:48`);
    assert.deepEqual(seen, [
      ['message', { kind: 'message', data: 'hi', raw: '"hi"' }],
      ['message', { kind: 'message', data: 'yo', raw: '"yo"' }],
      ['message', { kind: 'message', data: { a: 1 }, raw: '{"a":1}' }],
      ['message', { kind: 'message', data: 'are you there?', raw: '"are you there?"' }],
      ['receipt', { kind: 'receipt', status: 'delivered', delivered: true, text: '发送成功', data: 'hi', raw: '{"content":"\\"hi\\"","receipt":"发送成功"}' }],
      ['message', { kind: 'message', data: 'back', raw: '"back"' }],
    ]);
  });

  it('resumes from sessionStorage after a reload, and reports a resume that is not recovered', async () => {
    const storage = memoryStorage([['freeim-position:2', `${E}:7`], ['freeim-position:3', 'ffffffffffffffff:1']]);
    const { im, seen } = client(storage, { websocketId: 2 });
    im.start();
    const socket = await sockets(1);
    assert.equal(socket.url, `ws://gw/ws?token=t1&resume=${E}:7`);
    socket.open();
    socket.receive('{"t":"hello","e":"0b1c2d3e4f5a6b7c","o":3,"recovered":false}');
    socket.receive('{"o":4,"d":"new"}');
    im.stop();
    assert.deepEqual(seen, [
      ['historylost', { epoch: '0b1c2d3e4f5a6b7c', offset: 3, from: `${E}:7` }],
      ['message', { kind: 'message', data: 'new', raw: '"new"' }],
    ]);
    assert.equal(storage.map.get('freeim-position:2'), '0b1c2d3e4f5a6b7c:4');
    assert.equal(storage.map.get('freeim-position:3'), 'ffffffffffffffff:1', 'another client keeps its own');
  });

  it('starts from the top when the stored position is not a resume value', async () => {
    const { im, seen } = client(memoryStorage([['freeim-position:2', 'garbage']]), { websocketId: 2 });
    im.start();
    const socket = await sockets(1);
    assert.equal(socket.url, 'ws://gw/ws?token=t1&resume=');
    socket.open();
    socket.receive(`{"t":"hello","e":"${E}","o":0,"recovered":false}`);
    im.stop();
    assert.deepEqual(seen, [], 'a fresh start is not a loss');
  });

  it('leaves FreeIM sockets as they were', async () => {
    const { im, seen } = client(memoryStorage(), { durable: false });
    im.start();
    const socket = await sockets(1);
    assert.equal(socket.url, 'ws://gw/ws?token=t1');
    socket.open();
    socket.receive('{"o":1,"d":"x"}');
    im.stop();
    assert.deepEqual(seen, [['message', { kind: 'message', data: { o: 1, d: 'x' }, raw: '{"o":1,"d":"x"}' }]]);
  });
});
