/*
 * The demo chat page. It talks to the business app over FreeIM's demo routes (form POSTs
 * under /ws/) and receives through freeim.js. Messages use the shape of FreeIM's own demo
 * page ({type, sender, senderNick, chan, time, msg}), so both pages can share a channel.
 *
 * Its sockets are durable and it sends durably (the routes' `durable` field): a page that
 * reloads, or whose socket drops, gets every message it missed when it reconnects. The page
 * keeps its id and its channels in sessionStorage so that a reload resumes as the same
 * client; when the gateway could not recover what was missed, a notice says so.
 *
 * Everything a person typed reaches the DOM through textContent only.
 */
(function () {
  'use strict';

  var MAX_MESSAGES_PER_CONVERSATION = 500; // older lines are dropped from the page
  var BROADCAST = 'broadcast';

  var $ = function (id) {
    return document.getElementById(id);
  };

  /** Builds an element: el('div', {class: 'x', text: 'y', data: {k: v}}, [children]). */
  function el(tag, props, children) {
    var node = document.createElement(tag);
    props = props || {};
    for (var k in props) {
      var v = props[k];
      if (v == null) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'data') for (var d in v) node.dataset[d] = v[d];
      else if (k === 'on') for (var ev in v) node.addEventListener(ev, v[ev]);
      else node.setAttribute(k, v);
    }
    (children || []).forEach(function (c) {
      if (c != null) node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  var params = new URLSearchParams(location.search);
  var storedId = sessionStorage.getItem('freeim-demo-id');
  var storedJoined = JSON.parse(sessionStorage.getItem('freeim-demo-joined') || '[]');
  var state = {
    id: storedId ? Number(storedId) : null,
    nick: params.get('nick') || localStorage.getItem('freeim-demo-nick') || 'Guest ' + Math.floor(1000 + Math.random() * 9000),
    joined: Array.isArray(storedJoined) ? storedJoined : [], // channel names, in join order
    convs: {}, // key -> {key, kind, title, peer, chan, messages: [], unread}
    current: BROADCAST,
    online: [],
    channels: [],
  };

  // --- talking to the business app ---------------------------------------------------

  function post(route, fields) {
    var body = new URLSearchParams();
    for (var k in fields) if (fields[k] != null) body.set(k, String(fields[k]));
    return fetch('/ws/' + route, { method: 'POST', body: body })
      .then(function (res) {
        return res.json().catch(function () {
          return { code: -1, msg: 'HTTP ' + res.status };
        });
      })
      .then(function (answer) {
        if (answer.code !== 0) throw new Error(answer.msg || 'request failed');
        return answer;
      });
  }

  function envelope(type, msg, extra) {
    var m = { type: type, sender: state.id, senderNick: state.nick, time: Date.now(), msg: msg };
    for (var k in extra || {}) m[k] = extra[k];
    return JSON.stringify(m);
  }

  function sendToChannel(chan, msg) {
    var message = envelope('chanmsg', msg, { chan: chan });
    return post('send-channelmsg', { websocketId: state.id, channel: chan, message: message, durable: true });
  }

  function setJoined(joined) {
    state.joined = joined;
    sessionStorage.setItem('freeim-demo-joined', JSON.stringify(joined));
  }

  // --- conversations -----------------------------------------------------------------

  function conv(key) {
    if (state.convs[key]) return state.convs[key];
    var c = { key: key, messages: [], unread: 0 };
    if (key === BROADCAST) {
      c.kind = 'broadcast';
      c.title = 'Everyone';
    } else if (key.indexOf('chan:') === 0) {
      c.kind = 'chan';
      c.chan = key.slice(5);
      c.title = '# ' + c.chan;
    } else {
      c.kind = 'dm';
      c.peer = Number(key.slice(3));
      c.title = nickOf(c.peer) || 'Guest ' + c.peer;
    }
    state.convs[key] = c;
    return c;
  }

  function nickOf(id) {
    for (var i = 0; i < state.online.length; i++) if (state.online[i].websocketId === id) return state.online[i].nick;
    return null;
  }

  function push(key, item) {
    var c = conv(key);
    c.messages.push(item);
    if (c.messages.length > MAX_MESSAGES_PER_CONVERSATION) c.messages.shift();
    if (key === state.current) appendMessage(item);
    else if (item.kind !== 'sys') c.unread++;
    renderConvs();
  }

  function open(key) {
    state.current = key;
    var c = conv(key);
    c.unread = 0;
    var sub = {
      broadcast: 'Broadcast: every connected page receives these messages',
      chan: 'Channel: members who are online receive these messages',
      dm: 'Private conversation',
    }[c.kind];
    $('conv-title').textContent = c.title;
    $('conv-sub').textContent = sub;
    $('leave').hidden = c.kind !== 'chan';
    $('receipt-toggle').hidden = c.kind !== 'dm';
    $('text').placeholder = c.kind === 'broadcast' ? 'Message everyone…' : 'Message ' + c.title + '…';
    var list = $('messages');
    list.textContent = '';
    c.messages.forEach(appendMessage);
    renderConvs();
    renderChannels();
    renderOnline();
    $('text').focus();
  }

  // --- rendering -----------------------------------------------------------------------

  function timeText(ms) {
    var d = new Date(typeof ms === 'number' ? ms : Date.now());
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function initial(name) {
    return (String(name || '?').trim()[0] || '?').toUpperCase();
  }

  var AVATAR_COLORS = ['#e11d48', '#2563eb', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d'];
  function color(id) {
    return AVATAR_COLORS[Math.abs(Number(id)) % AVATAR_COLORS.length];
  }

  function avatar(id, name) {
    var a = el('div', { class: 'avatar', text: initial(name), 'aria-hidden': 'true' });
    a.style.background = color(id);
    return a;
  }

  var RECEIPT_TEXT = { sending: 'sending…', delivered: '✓ delivered', offline: 'user offline', failed: 'not sent' };

  function appendMessage(item) {
    var list = $('messages');
    var nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    var node;
    if (item.kind === 'sys') {
      node = el('div', { class: 'sys' + (item.error ? ' error' : ''), text: item.text, data: { kind: 'sys' } });
    } else {
      var mine = item.sender === state.id;
      var meta = el('div', { class: 'meta' }, [
        el('span', { class: 'who', text: mine ? 'You' : item.nick || 'Guest ' + item.sender }),
        el('time', { class: 'when', text: timeText(item.time) }),
      ]);
      var bubble = el('div', { class: 'bubble', text: item.text });
      var body = el('div', { class: 'body' }, [meta, bubble]);
      if (item.receipt) {
        item.statusNode = el('div', { class: 'status', text: RECEIPT_TEXT[item.receipt], data: { status: item.receipt } });
        body.appendChild(item.statusNode);
      }
      node = el('div', { class: 'msg ' + (mine ? 'mine' : 'theirs'), data: { kind: 'msg', sender: item.sender } }, [
        mine ? null : avatar(item.sender, item.nick),
        body,
      ]);
    }
    list.appendChild(node);
    if (nearBottom || (item.sender === state.id && item.kind !== 'sys')) list.scrollTop = list.scrollHeight;
  }

  function setReceipt(item, status) {
    item.receipt = status;
    if (item.statusNode) {
      item.statusNode.textContent = RECEIPT_TEXT[status];
      item.statusNode.dataset.status = status;
    }
  }

  function renderConvs() {
    var ul = $('convs');
    ul.textContent = '';
    var keys = [BROADCAST].concat(
      Object.keys(state.convs).filter(function (k) {
        return state.convs[k].kind === 'dm';
      })
    );
    keys.forEach(function (key) {
      var c = conv(key);
      if (c.kind === 'dm') c.title = nickOf(c.peer) || c.title;
      var label = c.kind === 'broadcast' ? 'Everyone (broadcast)' : '@ ' + c.title;
      ul.appendChild(
        el('li', { class: 'item' + (key === state.current ? ' active' : ''), data: { conv: key } }, [
          el('button', { type: 'button', class: 'item-main', on: { click: open.bind(null, key) } }, [
            el('span', { class: 'name', text: label }),
            c.unread ? el('span', { class: 'badge', text: String(c.unread) }) : null,
          ]),
        ])
      );
    });
  }

  function renderChannels() {
    var ul = $('channels');
    ul.textContent = '';
    var seen = {};
    var list = state.channels.slice();
    // A joined channel shows at once, before the next list from the server.
    state.joined.forEach(function (chan) {
      if (!list.some(function (c) { return c.chan === chan; })) list.push({ chan: chan, online: 1 });
    });
    list.sort(function (a, b) {
      return a.chan < b.chan ? -1 : a.chan > b.chan ? 1 : 0;
    });
    list.forEach(function (c) {
      if (seen[c.chan]) return;
      seen[c.chan] = true;
      var joined = state.joined.indexOf(c.chan) >= 0;
      var key = 'chan:' + c.chan;
      var cv = state.convs[key];
      ul.appendChild(
        el('li', { class: 'item' + (key === state.current ? ' active' : '') + (joined ? ' joined' : ''), data: { chan: c.chan } }, [
          el('button', { type: 'button', class: 'item-main', title: joined ? 'Open' : 'Join', on: { click: function () { joined ? open(key) : join(c.chan); } } }, [
            el('span', { class: 'name', text: '# ' + c.chan }),
            cv && cv.unread ? el('span', { class: 'badge', text: String(cv.unread) }) : null,
            el('span', { class: 'members', title: c.online + (c.online === 1 ? ' member' : ' members'), text: String(c.online) }),
          ]),
          el('button', {
            type: 'button',
            class: 'small ' + (joined ? 'ghost' : ''),
            text: joined ? 'Leave' : 'Join',
            data: { action: joined ? 'leave' : 'join' },
            on: { click: function () { joined ? leave(c.chan) : join(c.chan); } },
          }),
        ])
      );
    });
    $('channels-empty').hidden = list.length > 0;
  }

  function renderOnline() {
    var ul = $('online');
    ul.textContent = '';
    $('online-count').textContent = String(state.online.length);
    state.online.forEach(function (p) {
      var me = p.websocketId === state.id;
      var name = p.nick || 'Guest ' + p.websocketId;
      var key = 'dm:' + p.websocketId;
      ul.appendChild(
        el('li', { class: 'item person' + (key === state.current ? ' active' : ''), data: { id: String(p.websocketId) } }, [
          el('button', { type: 'button', class: 'item-main', title: me ? 'You' : 'Send a private message', disabled: me ? '' : null, on: { click: function () { if (!me) open(key); } } }, [
            avatar(p.websocketId, name),
            el('span', { class: 'name', text: name }),
            me ? el('span', { class: 'you', text: 'you' }) : null,
          ]),
        ])
      );
    });
    // Keep the titles of private conversations up to date with nicknames.
    var c = state.convs[state.current];
    if (c && c.kind === 'dm') {
      c.title = nickOf(c.peer) || c.title;
      $('conv-title').textContent = c.title;
    }
  }

  var STATE_TEXT = {
    connecting: 'connecting…',
    reconnecting: 'reconnecting…',
    open: 'online',
    closed: 'offline',
    kicked: 'signed out',
  };

  var countdown = null;
  function showConnection(s) {
    var pill = $('conn');
    pill.dataset.state = s.state;
    clearInterval(countdown);
    if (s.state === 'waiting') {
      var tick = function () {
        var left = Math.max(0, Math.ceil((im.nextRetryAt - Date.now()) / 1000));
        pill.textContent = 'reconnecting in ' + left + ' s';
        pill.title = (s.error || 'connection lost') + '. Click to retry now.';
      };
      tick();
      countdown = setInterval(tick, 500);
    } else {
      pill.textContent = STATE_TEXT[s.state] || s.state;
      pill.title = s.state === 'kicked' ? 'The server closed this session. Reload the page to come back.' : 'Connection to the gateway';
    }
    document.body.dataset.connection = s.state;
  }

  // --- actions ---------------------------------------------------------------------------

  function failed(key, what) {
    return function (err) {
      push(key, { kind: 'sys', error: true, text: what + ': ' + err.message });
    };
  }

  function join(chan) {
    chan = String(chan).trim();
    if (!chan) return;
    var key = 'chan:' + chan;
    post('subscr-channel', { websocketId: state.id, channel: chan })
      .then(function () {
        if (state.joined.indexOf(chan) < 0) setJoined(state.joined.concat([chan]));
        conv(key);
        open(key);
        return sendToChannel(chan, { type: 'welcome' });
      })
      .then(refreshChannels)
      .catch(failed(state.current, 'Cannot join ' + chan));
  }

  function leave(chan) {
    var key = 'chan:' + chan;
    sendToChannel(chan, { type: 'leave' })
      .catch(function () {})
      .then(function () {
        return post('leave-channel', { websocketId: state.id, channel: chan });
      })
      .then(function () {
        setJoined(state.joined.filter(function (c) { return c !== chan; }));
        push(key, { kind: 'sys', text: 'You left # ' + chan });
        if (state.current === key) open(BROADCAST);
        return refreshChannels();
      })
      .catch(failed(key, 'Cannot leave ' + chan));
  }

  var nextMid = 1;
  function send(text) {
    var c = conv(state.current);
    if (c.kind === 'chan') {
      if (state.joined.indexOf(c.chan) < 0) return push(c.key, { kind: 'sys', error: true, text: 'Join # ' + c.chan + ' to write here' });
      return sendToChannel(c.chan, { type: 'text', content: text }).catch(failed(c.key, 'Not sent'));
    }
    if (c.kind === 'broadcast') {
      var message = envelope('broadcastmsg', { type: 'text', content: text }, { chan: null });
      return post('send-broadcast', { websocketId: state.id, message: message, durable: true }).catch(failed(c.key, 'Not sent'));
    }
    // A private message is not echoed to its sender: show it now, and its receipt later.
    var receipt = $('receipt').checked;
    var mid = state.id + '-' + nextMid++;
    var item = { kind: 'msg', sender: state.id, nick: state.nick, time: Date.now(), text: text, mid: mid, receipt: receipt ? 'sending' : null };
    push(c.key, item);
    var body = envelope('privatemsg', { type: 'text', content: text }, { receiver: c.peer, mid: mid });
    post('send-msg', { senderWebsocketId: state.id, receiveWebsocketId: c.peer, message: body, isReceipt: receipt, durable: true })
      .catch(function (err) {
        if (item.receipt) setReceipt(item, 'failed');
        failed(c.key, 'Not sent')(err);
      });
  }

  function setNick(nick) {
    nick = String(nick).trim().slice(0, 32);
    if (!nick || nick === state.nick) {
      $('nick').value = state.nick;
      return;
    }
    var old = state.nick;
    state.nick = nick;
    localStorage.setItem('freeim-demo-nick', nick);
    updateMe();
    if (state.id == null) return;
    post('set-nick', { websocketId: state.id, nick: nick }).catch(failed(state.current, 'Cannot rename'));
    state.joined.forEach(function (chan) {
      sendToChannel(chan, { type: 'changenick', oldnick: old, newnick: nick }).catch(function () {});
    });
  }

  function refreshChannels() {
    return post('get-channels', {}).then(function (a) {
      state.channels = a.channels || [];
      renderChannels();
    });
  }

  function refreshOnline() {
    return post('online', {}).then(function (a) {
      state.online = a.clients || [];
      renderOnline();
      renderConvs();
    });
  }

  function updateMe() {
    $('nick').value = state.nick;
    $('me-id').textContent = state.id == null ? '…' : String(state.id);
    var a = $('me-avatar');
    a.textContent = initial(state.nick);
    if (state.id != null) a.style.background = color(state.id);
  }

  // --- incoming ------------------------------------------------------------------------

  function onMessage(m) {
    if (!m || typeof m !== 'object') return;
    var text = m.msg && typeof m.msg.content === 'string' ? m.msg.content : null;
    var who = m.senderNick || 'Guest ' + m.sender;
    var item = { kind: 'msg', sender: m.sender, nick: m.senderNick, time: m.time, text: text };
    switch (m.type) {
      case 'chanmsg': {
        var key = 'chan:' + m.chan;
        if (state.joined.indexOf(m.chan) < 0 && !state.convs[key]) return;
        var t = m.msg && m.msg.type;
        if (t === 'welcome') return push(key, { kind: 'sys', text: (m.sender === state.id ? 'You' : who) + ' joined # ' + m.chan });
        if (t === 'leave') return push(key, { kind: 'sys', text: who + ' left # ' + m.chan });
        if (t === 'changenick') return push(key, { kind: 'sys', text: (m.msg.oldnick || 'Guest ' + m.sender) + ' is now ' + (m.msg.newnick || 'Guest ' + m.sender) });
        if (text != null) push(key, item);
        return;
      }
      case 'broadcastmsg':
        if (text != null) push(BROADCAST, item);
        return;
      case 'privatemsg':
        if (text != null && m.sender !== state.id) push('dm:' + m.sender, item);
        return;
      case 'presence':
        state.online = m.online || [];
        state.channels = m.channels || [];
        renderOnline();
        renderChannels();
        renderConvs();
        if (m.truncated) refreshOnline();
        return;
    }
  }

  function onReceipt(r) {
    var m = r.data;
    if (!m || m.type !== 'privatemsg') return;
    var c = state.convs['dm:' + m.receiver];
    if (!c) return;
    for (var i = c.messages.length - 1; i >= 0; i--) {
      if (c.messages[i].mid === m.mid) return setReceipt(c.messages[i], r.status === 'delivered' ? 'delivered' : 'offline');
    }
  }

  // --- start ---------------------------------------------------------------------------

  var im = new FreeIM({ preConnect: '/ws/pre-connect', websocketId: state.id, durable: true });
  window.freeimDemo = { state: state, im: im }; // for the console and the browser tests
  im.on('state', showConnection);
  im.on('message', function (f) {
    onMessage(f.data);
  });
  im.on('receipt', onReceipt);
  im.on('open', function (e) {
    var first = state.id == null;
    state.id = e.websocketId;
    sessionStorage.setItem('freeim-demo-id', String(state.id));
    updateMe();
    // Membership and the nickname do not outlive a connection: set them again each time.
    var setup = [post('set-nick', { websocketId: state.id, nick: state.nick }).catch(function () {})];
    state.joined.forEach(function (chan) {
      setup.push(post('subscr-channel', { websocketId: state.id, channel: chan }));
    });
    Promise.all(setup)
      .then(function () {
        return Promise.all([refreshChannels(), refreshOnline()]);
      })
      .then(function () {
        document.body.dataset.ready = String(im.connects);
      })
      .catch(failed(state.current, 'Cannot load the lists'));
    if (!first && e.reconnected) push(state.current, { kind: 'sys', text: 'Reconnected' });
  });
  // This demo keeps no history on its business side, so there is nothing to reload: the
  // page says what it cannot show.
  im.on('historylost', function () {
    $('history-notice').hidden = false;
    push(state.current, { kind: 'sys', error: true, text: 'Messages sent while you were away could not be recovered' });
  });
  $('history-dismiss').addEventListener('click', function () {
    $('history-notice').hidden = true;
  });
  im.on('close', function () {
    push(state.current, { kind: 'sys', text: 'Connection lost; reconnecting…' });
  });

  $('conn').addEventListener('click', function () {
    im.reconnectNow();
  });
  $('nick').addEventListener('change', function () {
    setNick(this.value);
  });
  $('nick').addEventListener('keydown', function (e) {
    if (e.key === 'Enter') this.blur();
  });
  $('new-channel').addEventListener('submit', function (e) {
    e.preventDefault();
    var input = $('new-channel-name');
    join(input.value);
    input.value = '';
  });
  $('leave').addEventListener('click', function () {
    var c = conv(state.current);
    if (c.kind === 'chan') leave(c.chan);
  });
  $('composer').addEventListener('submit', function (e) {
    e.preventDefault();
    var input = $('text');
    var text = input.value.trim();
    if (!text) return;
    input.value = '';
    send(text);
  });

  updateMe();
  open(BROADCAST);
  im.start();
})();
