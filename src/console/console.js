// The genesys-worker console: login, control buttons, dead-letter replays, and live pages
// (polling the JSON API every 2 s). Data is written with textContent only, never as HTML.
// The admin token lives in this tab's sessionStorage and travels in an Authorization header,
// never in a cookie.
(function () {
  'use strict';

  var POLL_MS = 2000;
  var TOKEN = 'genesys-worker.console.token';
  var ACTOR = 'genesys-worker.console.actor';
  var body = document.body;
  var page = body.dataset.page;
  var writable = body.dataset.writable === 'true';

  function $(id) { return document.getElementById(id); }
  function all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }
  function token() { return sessionStorage.getItem(TOKEN); }
  function actor() { return sessionStorage.getItem(ACTOR); }
  function loggedIn() { return writable && !!token() && !!actor(); }

  function setText(id, text) {
    var el = $(id);
    if (el) { el.textContent = text; }
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) { return; }
      if (name === 'text') { node.textContent = value; }
      else if (name === 'className') { node.className = value; }
      else { node.setAttribute(name, value === true ? '' : String(value)); }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function replaceRows(tbody, rows) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  // An RFC 3339 UTC time to the second, as the server renders it.
  function shortTime(at) {
    return at && at.charAt(10) === 'T' ? at.slice(0, 19).replace('T', ' ') + ' UTC' : at;
  }
  function shortId(id) { return id.length > 8 ? id.slice(0, 8) + '…' : id; }

  function num(x) { return Number.isInteger(x) ? String(x) : x.toFixed(2); }
  function secs(x) {
    return x < 60 ? x.toFixed(1) + ' s' : Math.floor(x / 60) + ' min ' + Math.round(x % 60) + ' s';
  }

  // Calls the API; with the token when logged in (or the one given, at login).
  function api(method, path, payload, withToken) {
    var headers = { 'Accept': 'application/json' };
    var bearer = withToken || token();
    if (bearer) { headers['Authorization'] = 'Bearer ' + bearer; }
    var init = { method: method, headers: headers, credentials: 'omit', cache: 'no-store' };
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { status: response.status, ok: response.ok, data: data };
      });
    });
  }

  function flash(message, bad) {
    var box = $('flash');
    if (!box) { return; }
    box.textContent = message;
    box.className = bad ? 'bad' : '';
    box.hidden = false;
  }

  function errorText(result) {
    var error = result.data && result.data.error;
    return error ? error.message + ' (' + result.status + ')' : 'request failed (' + result.status + ')';
  }

  // Session: the login form, and what needs it.
  function showSession() {
    var form = $('login-form');
    var inBox = $('logged-in');
    var signedIn = loggedIn();
    if (form) { form.hidden = signedIn; }
    if (inBox) { inBox.hidden = !signedIn; }
    setText('actor-name', actor() || '');
    all('.mutating').forEach(function (button) { button.disabled = !signedIn; });
    all('.needs-login').forEach(function (note) { note.hidden = signedIn; });
  }

  var loginForm = $('login-form');
  if (loginForm) {
    loginForm.addEventListener('submit', function (event) {
      event.preventDefault();
      var name = $('login-actor').value.trim();
      var given = $('login-token').value;
      setText('login-error', '');
      api('GET', '/api/session', undefined, given).then(function (result) {
        if (!result.ok) {
          setText('login-error', result.status === 401 ? 'wrong token' : errorText(result));
          return;
        }
        sessionStorage.setItem(TOKEN, given);
        sessionStorage.setItem(ACTOR, name);
        $('login-token').value = '';
        showSession();
      });
    });
  }
  var logout = $('logout');
  if (logout) {
    logout.addEventListener('click', function () {
      sessionStorage.removeItem(TOKEN);
      sessionStorage.removeItem(ACTOR);
      showSession();
    });
  }

  // Controls: any button with data-action (pause, resume, cancel) on a scope and value.
  function change(action, scope, value, reason) {
    return api('POST', '/api/controls', {
      action: action, scope: scope, value: value, actor: actor() || '', reason: reason || null
    }).then(function (result) {
      if (result.ok) {
        var c = result.data.control;
        flash(action + ' ' + c.scope + ' ' + c.value + ': done, by ' + actor());
      } else {
        flash(action + ' failed: ' + errorText(result), true);
        if (result.status === 401) { sessionStorage.removeItem(TOKEN); showSession(); }
      }
      refresh();
      return result;
    });
  }

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-action]');
    if (!button || button.disabled) { return; }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) { return; }
    var reasonInput = $('batch-reason');
    change(button.dataset.action, button.dataset.scope, button.dataset.value, reasonInput ? reasonInput.value : '');
  });

  var pauseForm = $('pause-form');
  if (pauseForm) {
    pauseForm.addEventListener('submit', function (event) {
      event.preventDefault();
      change('pause', $('pause-scope').value, $('pause-value').value.trim(), $('pause-reason').value).then(function (result) {
        if (result.ok) { $('pause-value').value = ''; $('pause-reason').value = ''; }
      });
    });
  }

  // The controls table (overview).
  function controlRows(controls) {
    return controls.map(function (c) {
      var resume = c.action === 'pause'
        ? el('button', { type: 'button', className: 'mutating', 'data-testid': 'resume-control', 'data-action': 'resume',
            'data-scope': c.scope, 'data-value': c.value, disabled: !loggedIn(), text: 'Resume' })
        : el('span');
      return el('tr', { 'data-testid': 'control-row', 'data-action': c.action, 'data-scope': c.scope, 'data-value': c.value }, [
        el('td', {}, [el('span', { className: 'pill ' + c.action, text: c.action })]),
        el('td', { text: c.scope + ' ' + c.value }),
        el('td', { text: c.actor }),
        el('td', { title: c.at, text: shortTime(c.at) }),
        el('td', { text: c.reason || '' }),
        el('td', {}, [resume])
      ]);
    });
  }

  function showOverview(o) {
    setText('jobs-per-second', num(o.jobs.per_second));
    setText('jobs-last-minute', String(o.jobs.last_minute));
    setText('in-flight-total', String(o.in_flight.total));
    setText('in-flight-single', String(o.in_flight.single || 0));
    setText('in-flight-batch', String(o.in_flight.batch || 0));
    setText('oldest-job-age', secs(o.oldest_job_age_secs));
    setText('genesys-rps', num(o.genesys.requests_per_second));
    setText('genesys-requests', String(o.genesys.requests_last_minute));
    setText('genesys-throttled', String(o.genesys.throttled_last_minute));
    setText('consuming', o.consuming ? 'consuming' : 'not consuming');
    $('consuming').className = o.consuming ? 'ok' : 'bad';
    setText('controls-count', String(o.controls.length));
    replaceRows($('outcomes').tBodies[0], o.jobs.by_outcome.map(function (x) {
      return el('tr', { 'data-outcome': x.outcome }, [
        el('td', {}, [el('span', { className: 'outcome ' + x.outcome, text: x.outcome })]),
        el('td', { className: 'num', text: num(x.per_second) }),
        el('td', { className: 'num', text: String(x.last_minute) }),
        el('td', { className: 'num', text: String(x.total) })
      ]);
    }));
    $('no-outcomes').hidden = o.jobs.by_outcome.length > 0;
    replaceRows($('budgets').tBodies[0], o.genesys.budgets.map(function (b) {
      return el('tr', {}, [
        el('td', {}, [el('code', { text: b.client })]),
        el('td', { className: 'num', text: b.configured_per_second === null ? '–' : num(b.configured_per_second) }),
        el('td', { className: 'num', text: num(b.effective_per_second) }),
        el('td', { className: 'num', text: String(b.waiting) }),
        el('td', { text: b.paused_for_secs === null ? 'no' : secs(b.paused_for_secs) })
      ]);
    }));
    replaceRows($('controls').tBodies[0], controlRows(o.controls));
    $('no-controls').hidden = o.controls.length > 0;
    $('controls-stale').hidden = !o.controls_stale;
  }

  function bar(b, testid) {
    return el('div', { className: 'bar', 'data-testid': testid, role: 'progressbar', 'aria-valuemin': 0,
      'aria-valuemax': 100, 'aria-valuenow': b.percent }, [fill(b.percent)]);
  }
  function fill(percent) {
    var span = el('span', { className: 'fill' });
    span.style.width = percent + '%';
    return span;
  }
  function progressText(b) { return b.finished + ' of ' + b.total + ' children final (' + b.percent + '%)'; }
  function countsText(b) {
    return Object.keys(b.counts).map(function (k) { return k + ' ' + b.counts[k]; }).join(' · ');
  }
  function state(b) {
    if (b.cancelled) { return 'cancelled by ' + b.cancelled.actor + ' at ' + shortTime(b.cancelled.at); }
    if (b.paused) { return 'paused by ' + b.paused.actor + ' at ' + shortTime(b.paused.at); }
    return b.status;
  }

  function showBatches(data) {
    replaceRows($('batches').tBodies[0], data.batches.map(function (b) {
      return el('tr', { 'data-testid': 'batch-row', 'data-batch': b.batch_id }, [
        el('td', {}, [el('a', { href: '/console/batches/' + encodeURIComponent(b.batch_id) }, [el('code', { text: b.batch_id })])]),
        el('td', {}, [bar(b, 'batch-row-bar'), el('small', { text: progressText(b) })]),
        el('td', { text: countsText(b) }),
        el('td', { text: state(b) })
      ]);
    }));
    $('no-batches').hidden = data.batches.length > 0;
  }

  function showBatch(b) {
    var barEl = document.querySelector('[data-testid="batch-progress-bar"]');
    barEl.setAttribute('aria-valuenow', b.percent);
    barEl.firstChild.style.width = b.percent + '%';
    setText('batch-progress-text', progressText(b));
    setText('batch-published', b.published + ' of ' + b.total);
    setText('batch-summary', b.summary_sent ? 'announced' : 'pending');
    setText('batch-state', state(b));
    var control = b.cancelled || b.paused;
    setText('batch-reason-shown', control && control.reason ? control.reason : '–');
    document.querySelector('[data-testid="batch-pause"]').hidden = !!(b.paused || b.cancelled);
    document.querySelector('[data-testid="batch-resume"]').hidden = !b.paused;
    document.querySelector('[data-testid="batch-cancel"]').hidden = !!b.cancelled;
    replaceRows($('batch-counts').tBodies[0], Object.keys(b.counts).map(function (k) {
      return el('tr', { 'data-testid': 'count-' + k }, [
        el('td', {}, [el('span', { className: 'outcome ' + k, text: k })]),
        el('td', { className: 'num', text: String(b.counts[k]) })
      ]);
    }));
    replaceRows($('batch-errors').tBodies[0], b.first_errors.map(function (e) {
      var text = function (name) { return e[name] === undefined || e[name] === null ? '' : String(e[name]); };
      return el('tr', {}, [
        el('td', { className: 'num', text: text('index') }),
        el('td', {}, [el('a', { href: '/console/jobs?q=' + encodeURIComponent(text('job_id')), title: text('job_id') },
          [el('code', { text: shortId(text('job_id')) })])]),
        el('td', {}, [el('span', { className: 'outcome ' + text('outcome'), text: text('outcome') })]),
        el('td', {}, [el('code', { text: text('code') })]),
        el('td', { text: text('message') })
      ]);
    }));
    $('no-errors').hidden = b.first_errors.length > 0;
  }

  // Live pages: what each polls, and how it shows it.
  var live = {
    overview: { path: function () { return '/api/overview'; }, show: showOverview },
    batches: { path: function () { return '/api/batches'; }, show: showBatches },
    batch: {
      path: function () { return '/api/batches/' + encodeURIComponent($('batch').dataset.batch); },
      show: showBatch
    }
  }[page];

  var polling = false;
  function refresh() {
    if (!live || polling) { return; }
    polling = true;
    api('GET', live.path()).then(function (result) {
      if (result.ok) {
        live.show(result.data);
        setText('updated', new Date().toLocaleTimeString());
      }
    }).catch(function () {}).then(function () { polling = false; });
  }
  if (live) {
    setInterval(function () { if (!document.hidden) { refresh(); } }, POLL_MS);
  }

  // Dead letters: select, replay selected or all that match, dry run or not.
  var selectAll = $('dlq-select-all');
  if (selectAll) {
    selectAll.addEventListener('change', function () {
      all('.dlq-select').forEach(function (box) { if (!box.disabled) { box.checked = selectAll.checked; } });
    });
  }
  function replay(everything) {
    var filter = $('dlq-actions').dataset;
    var ids = all('.dlq-select').filter(function (box) { return box.checked; }).map(function (box) { return box.value; });
    if (!everything && ids.length === 0) { flash('Tick the letters to replay first.', true); return; }
    var dry = $('dlq-dry-run').checked;
    var request = { kind: filter.kind || null, code: filter.code || null, batch: filter.batch || null,
      job_ids: everything ? [] : ids, all: everything, dry_run: dry, actor: actor() };
    var result = $('dlq-result');
    result.textContent = dry ? 'Dry run…' : 'Replaying…';
    api('POST', '/api/dead-letters/replay', request).then(function (answer) {
      if (!answer.ok) { result.textContent = ''; flash('replay failed: ' + errorText(answer), true); return; }
      var d = answer.data;
      if (d.running) { result.textContent = d.message; return; }
      while (result.firstChild) { result.removeChild(result.firstChild); }
      result.appendChild(el('p', { 'data-testid': 'dlq-result-summary',
        text: (d.dry_run ? 'Would replay ' : 'Replayed ') + d.count + ' letter(s); ' + d.left + ' not matching left in the queue.' }));
      result.appendChild(el('ul', {}, d.replayed.map(function (l) {
        return el('li', {}, [el('code', { text: l.job_id || '(no job id)' }), ' ' + (l.kind || '?') + ' ', el('code', { text: l.code })]);
      })));
      if (!d.dry_run) { flash('Replayed ' + d.count + ' letter(s). Reload to list the queue again.'); }
    });
  }
  var replaySelected = $('dlq-replay-selected');
  if (replaySelected) { replaySelected.addEventListener('click', function () { replay(false); }); }
  var replayAll = $('dlq-replay-all');
  if (replayAll) {
    replayAll.addEventListener('click', function () {
      if ($('dlq-dry-run').checked || window.confirm('Replay every dead letter that matches the filter?')) { replay(true); }
    });
  }

  showSession();
})();
