/*
 * freeim.js: a small browser client for any FreeIM business app (FreeIM 2.x wire format).
 *
 * FreeIM browsers never send through the socket: they ask the business app for a connect
 * URL (a single-use token that lives 10 s), open the WebSocket, and receive frames. Each
 * frame is the business message as the sender's ImHelper serialized it to JSON, so a page
 * that sends JSON text gets it serialized twice; receipts are a third layer. This client
 * unwraps all of that into events, and keeps the socket up: after any loss it fetches a
 * fresh token and reconnects, with exponential backoff and jitter so a restarted gateway
 * is not hit by every browser at the same instant.
 *
 *   const im = new FreeIM({ preConnect: '/ws/pre-connect' });
 *   im.on('state', (s) => …);            // 'connecting' | 'open' | 'waiting' | 'closed' | 'kicked'
 *   im.on('open', ({ websocketId, reconnected }) => …);
 *   im.on('message', ({ data, raw }) => …);
 *   im.on('receipt', ({ status, delivered, data, raw }) => …);   // status: 'delivered' | 'offline' | 'unknown'
 *   im.start();
 *
 * With `durable: true` the sockets are durable (docs/PROTOCOL.md, "Durable sockets"): the
 * client connects with `&resume=` the first time and `&resume=E:O` after that, so every
 * durable message sent while it was away comes after the reconnect, once, in order. Its
 * position (epoch:offset) is kept across reconnects and, under `freeim-position:<id>` in
 * `sessionStorage` (option `storage`), across a reload. Messages reach `message` and
 * `receipt` exactly as from a FreeIM socket (`raw` is the FreeIM frame, the `d` member).
 * When a resume cannot be served (the log was lost or trimmed), the client takes the new
 * position and says so; the page should reload what it shows from its business backend:
 *
 *   im.on('historylost', ({ epoch, offset, from }) => …);   // from: the position resumed from
 *
 * `preConnect` is either the URL of FreeIM's `POST pre-connect` route (form field
 * `websocketId`, answer `{code, server, websocketId}`), or an async function
 * `(websocketId) => ({ server, websocketId })` for apps with their own route.
 *
 * Usable as a classic script (`window.FreeIM`) or from CommonJS.
 */
(function (root) {
  'use strict';

  // FreeIM's receipt texts (Chinese in the reference server): delivered / user offline.
  var RECEIPT_DELIVERED = '\u53d1\u9001\u6210\u529f';
  var RECEIPT_OFFLINE = '\u7528\u6237\u4e0d\u5728\u7ebf';
  // The close reason the gateway gives when the business app forces a client offline:
  // reconnecting would defeat the point, so the client stops ('kicked').
  var FORCED_OFFLINE_REASON = 'disconnect';

  var DEFAULTS = {
    initialDelay: 500, // ms before the first reconnect attempt
    maxDelay: 15000, // ms, cap of the exponential backoff
    jitter: 0.5, // each delay is scaled by a random factor in [1 - jitter, 1]
    stableAfter: 5000, // ms a socket must stay open before the backoff starts over
    preConnectTimeout: 10000, // ms for the pre-connect request
  };

  function parseJson(text) {
    try {
      return { ok: true, value: JSON.parse(text) };
    } catch (e) {
      return { ok: false };
    }
  }

  /**
   * Unwraps the business message: a JSON string that holds JSON (a page that sent
   * JSON text) is parsed once more; anything else is returned as is.
   */
  function unwrap(value) {
    if (typeof value === 'string') {
      var inner = parseJson(value);
      if (inner.ok && inner.value !== null && typeof inner.value === 'object') return inner.value;
    }
    return value;
  }

  /**
   * Decodes one WebSocket text frame into `{ kind: 'message', data }` or
   * `{ kind: 'receipt', status, delivered, data }`. Exposed as `FreeIM.decodeFrame`.
   */
  function decodeFrame(text) {
    var outer = parseJson(text);
    if (!outer.ok) return { kind: 'message', data: text };
    var v = outer.value;
    if (v && typeof v === 'object' && typeof v.receipt === 'string' && typeof v.content === 'string') {
      var content = parseJson(v.content);
      var status = v.receipt === RECEIPT_DELIVERED ? 'delivered' : v.receipt === RECEIPT_OFFLINE ? 'offline' : 'unknown';
      return {
        kind: 'receipt',
        status: status,
        delivered: status === 'delivered',
        text: v.receipt,
        data: content.ok ? unwrap(content.value) : v.content,
      };
    }
    return { kind: 'message', data: unwrap(v) };
  }

  var POSITION = /^[0-9a-f]{16}:(0|[1-9][0-9]{0,15})$/; // a resume value E:O
  // A durable message frame as the gateway writes it: `{"o":N,"d":` or `{"d":`, content, `}`.
  var MESSAGE_HEAD = /^\{(?:"o":\d+,)?"d":/;

  function defaultStorage() {
    try {
      return root.sessionStorage || null;
    } catch (e) {
      return null; // storage disabled
    }
  }

  function FreeIM(options) {
    if (!(this instanceof FreeIM)) return new FreeIM(options);
    options = options || {};
    if (!options.preConnect) throw new Error('FreeIM: options.preConnect (a URL or a function) is required');
    this.options = {};
    for (var k in DEFAULTS) this.options[k] = options[k] !== undefined ? options[k] : DEFAULTS[k];
    this.preConnect = options.preConnect;
    this.websocketId = options.websocketId != null ? options.websocketId : null;
    this.durable = !!options.durable;
    this.storage = options.storage !== undefined ? options.storage : defaultStorage();
    this.position = null; // durable: 'epoch:offset', of client `positionOf`
    this.positionOf = null;
    this.state = 'closed';
    this.attempt = 0; // failed attempts since the last stable connection
    this.connects = 0; // successful opens so far
    this.listeners = {};
    this.socket = null;
    this.timer = null;
    this.stableTimer = null;
    this.running = false;
    this.nextRetryAt = null;
  }

  FreeIM.decodeFrame = decodeFrame;
  FreeIM.RECEIPT_DELIVERED = RECEIPT_DELIVERED;
  FreeIM.RECEIPT_OFFLINE = RECEIPT_OFFLINE;

  /** Subscribes `fn` to `event`; returns a function that unsubscribes. */
  FreeIM.prototype.on = function (event, fn) {
    var list = this.listeners[event] || (this.listeners[event] = []);
    list.push(fn);
    return function () {
      var i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  };

  FreeIM.prototype.emit = function (event, payload) {
    var list = (this.listeners[event] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try {
        list[i](payload);
      } catch (e) {
        if (root.console) root.console.error('FreeIM: a "' + event + '" listener failed', e);
      }
    }
  };

  FreeIM.prototype.setState = function (state, detail) {
    if (this.state === state && !detail) return;
    this.state = state;
    var payload = { state: state, attempt: this.attempt };
    if (detail) for (var k in detail) payload[k] = detail[k];
    this.emit('state', payload);
  };

  /** Connects, and keeps reconnecting until `stop()`. */
  FreeIM.prototype.start = function () {
    if (this.running) return this;
    this.running = true;
    this.connect();
    return this;
  };

  /** Closes the socket and stops reconnecting. */
  FreeIM.prototype.stop = function () {
    this.running = false;
    clearTimeout(this.timer);
    clearTimeout(this.stableTimer);
    if (this.socket) {
      var s = this.socket;
      this.socket = null;
      s.onclose = s.onerror = s.onmessage = s.onopen = null;
      try {
        s.close(1000, 'bye');
      } catch (e) {
        /* already closed */
      }
    }
    this.setState('closed');
    return this;
  };

  /** Skips the wait of a pending reconnect and tries now. */
  FreeIM.prototype.reconnectNow = function () {
    if (!this.running || this.state !== 'waiting') return;
    clearTimeout(this.timer);
    this.connect();
  };

  FreeIM.prototype.fetchConnectUrl = function () {
    if (typeof this.preConnect === 'function') {
      return Promise.resolve(this.preConnect(this.websocketId));
    }
    var body = new URLSearchParams();
    if (this.websocketId != null) body.set('websocketId', String(this.websocketId));
    var controller = typeof AbortController === 'function' ? new AbortController() : null;
    var timeout = setTimeout(function () {
      if (controller) controller.abort();
    }, this.options.preConnectTimeout);
    return fetch(this.preConnect, { method: 'POST', body: body, signal: controller && controller.signal })
      .then(function (res) {
        return res.json().then(function (answer) {
          if (!res.ok || answer.code !== 0) {
            throw new Error('pre-connect failed: ' + (answer.msg || 'HTTP ' + res.status));
          }
          return answer;
        });
      })
      .finally(function () {
        clearTimeout(timeout);
      });
  };

  FreeIM.prototype.connect = function () {
    var self = this;
    this.setState(this.connects > 0 ? 'reconnecting' : 'connecting');
    this.fetchConnectUrl().then(
      function (answer) {
        if (!self.running) return;
        if (!answer || !answer.server) throw new Error('pre-connect gave no server URL');
        if (answer.websocketId != null) self.websocketId = answer.websocketId;
        self.open(answer.server);
      },
      function (err) {
        self.retry(err);
      }
    ).catch(function (err) {
      self.retry(err);
    });
  };

  /** Durable: the position to resume from ('' from the top), loaded once per client id. */
  FreeIM.prototype.resumeFrom = function () {
    if (this.positionOf !== this.websocketId) {
      var stored = null;
      try {
        stored = this.storage && this.storage.getItem('freeim-position:' + this.websocketId);
      } catch (e) {
        /* storage disabled */
      }
      this.positionOf = this.websocketId;
      this.position = stored && POSITION.test(stored) ? stored : null;
    }
    return this.position || '';
  };

  FreeIM.prototype.setPosition = function (epoch, offset) {
    this.position = epoch + ':' + offset;
    try {
      if (this.storage) this.storage.setItem('freeim-position:' + this.positionOf, this.position);
    } catch (e) {
      /* storage full or disabled: the position lives as long as the page */
    }
  };

  /**
   * Durable: handles one frame of a durable socket; returns the FreeIM frame it carries
   * (the `d` member, verbatim), or null for a control frame.
   */
  FreeIM.prototype.durableFrame = function (text, from) {
    var f = parseJson(text);
    var v = f.ok && f.value && typeof f.value === 'object' ? f.value : {};
    if (v.t === 'hello') {
      if (!v.recovered) {
        this.setPosition(v.e, v.o);
        if (from) this.emit('historylost', { epoch: v.e, offset: v.o, from: from });
      }
      return null; // recovered: the position stays the one resumed from
    }
    if ('t' in v && v.t !== 'pos') return null; // another control frame: ignored
    if (typeof v.o === 'number' && this.position) this.setPosition(this.position.split(':')[0], v.o);
    if (!('d' in v)) return null;
    var head = MESSAGE_HEAD.exec(text);
    return head ? text.slice(head[0].length, -1) : JSON.stringify(v.d);
  };

  FreeIM.prototype.open = function (url) {
    var self = this;
    var socket;
    var from = null;
    if (this.durable) {
      from = this.resumeFrom();
      url += (url.indexOf('?') < 0 ? '?' : '&') + 'resume=' + from;
    }
    try {
      socket = new WebSocket(url);
    } catch (e) {
      return this.retry(e);
    }
    this.socket = socket;
    var opened = false;
    socket.onopen = function () {
      if (self.socket !== socket) return;
      opened = true;
      var reconnected = self.connects > 0;
      self.connects++;
      clearTimeout(self.stableTimer);
      self.stableTimer = setTimeout(function () {
        self.attempt = 0;
      }, self.options.stableAfter);
      self.setState('open');
      self.emit('open', { websocketId: self.websocketId, reconnected: reconnected });
    };
    socket.onmessage = function (e) {
      if (self.socket !== socket || typeof e.data !== 'string') return;
      var raw = self.durable ? self.durableFrame(e.data, from) : e.data;
      if (raw === null) return;
      var frame = decodeFrame(raw);
      frame.raw = raw;
      self.emit(frame.kind, frame);
    };
    socket.onclose = function (e) {
      if (self.socket !== socket) return;
      self.socket = null;
      clearTimeout(self.stableTimer);
      if (opened) self.emit('close', { code: e.code, reason: e.reason });
      if (e.reason === FORCED_OFFLINE_REASON) {
        self.running = false;
        self.setState('kicked', { code: e.code, reason: e.reason });
        return;
      }
      self.retry(new Error('socket closed (' + e.code + (e.reason ? ' ' + e.reason : '') + ')'));
    };
    // An error is always followed by a close event, which does the retry.
    socket.onerror = function () {};
  };

  /** The next delay: initialDelay * 2^attempt, capped, scaled by a random factor. */
  FreeIM.prototype.backoff = function () {
    var o = this.options;
    var base = Math.min(o.maxDelay, o.initialDelay * Math.pow(2, this.attempt));
    return Math.round(base * (1 - o.jitter * Math.random()));
  };

  FreeIM.prototype.retry = function (err) {
    if (!this.running) return;
    var delay = this.backoff();
    this.attempt++;
    this.nextRetryAt = Date.now() + delay;
    this.setState('waiting', { delay: delay, error: err ? String(err.message || err) : null });
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      self.connect();
    }, delay);
  };

  if (typeof module === 'object' && module.exports) module.exports = FreeIM;
  else root.FreeIM = FreeIM;
})(typeof self !== 'undefined' ? self : this);
