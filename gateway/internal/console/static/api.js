// Calls to the gateway's HTTP API. The session cookie (HttpOnly) authenticates them; the
// X-Postamt-Console header proves to the gateway that the console's own script sent them.

const headers = { 'X-Postamt-Console': '1' };

/** ApiError is a failed call: the HTTP status and the google.rpc.Status the gateway answered. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function signedOut() {
  location.assign('signin.html?error=expired');
  return new ApiError(401, { message: 'signed out' });
}

/** call sends one request and returns its JSON answer. */
export async function call(method, path, body) {
  const init = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) throw signedOut();
  const text = await r.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = { message: text }; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** query builds a query string; arrays repeat their key, empty values are left out. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const x of Array.isArray(v) ? v : [v]) if (x !== undefined && x !== null && x !== '') q.append(k, x);
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

/**
 * watch reads the server-sent events of a watch stream and hands each email to onEmail, with
 * whether the change took it out of the watch's filter (leftFilter), until signal aborts or the
 * stream ends (then it resolves; the caller reconnects). fetch, not
 * EventSource: EventSource cannot send the header the cookie needs.
 */
export async function watch(path, onEmail, onOpen, signal) {
  const r = await fetch(path, { headers: { ...headers, Accept: 'text/event-stream' }, credentials: 'same-origin', signal });
  if (r.status === 401) throw signedOut();
  if (!r.ok) throw new ApiError(r.status, {});
  onOpen();
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const msg = JSON.parse(line.slice(6));
        if (msg.result?.email) onEmail(msg.result.email, msg.result.leftFilter === true);
        if (msg.error) throw new ApiError(500, msg.error);
      }
    }
  }
}
