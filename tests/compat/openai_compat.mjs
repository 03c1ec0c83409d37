// Compatibility test: the OFFICIAL `openai` npm client (and Hugging Face's `@huggingface/inference`
// client) talking to a real tollgate daemon, which routes to the loopback mock upstream.
//
// Run by ctest (tests/CMakeLists.txt, compat.openai_node) as `node openai_compat.mjs` from
// tests/compat with TG_BIN, TG_MOCK_BIN, TG_SOURCE_DIR and TG_FIXTURES set; scripts/test.sh runs
// `npm ci` here first. Only 127.0.0.1 is ever contacted: both clients get a fetch that refuses
// any other host. Both child processes are killed by PID at the end, on failure too, and a
// watchdog ends the run (non-zero) if anything hangs.
//
// Expected contents and usage numbers are read from the fixtures the mock serves, so the test
// follows the fixtures: non-streamed = <provider>/chat.json; streamed = the file the mock picks
// for the upstream request, which always asks for usage (the gateway forces
// stream_options.include_usage=true): stream_include_usage.sse if present, else stream.sse.

import test, { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import OpenAI, { APIError, NotFoundError } from 'openai';
import { InferenceClient, InferenceClientProviderApiError } from '@huggingface/inference';

const PROVIDERS = ['groq', 'together', 'fireworks'];
const MODEL = 'openai/gpt-oss-120b';
const TEST_TIMEOUT_MS = 15_000;
const STARTUP_TIMEOUT_MS = 10_000;
const WATCHDOG_MS = 55_000;

// ---- environment -------------------------------------------------------------------------------

function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`openai_compat: ${name} is not set (run through ctest, or set TG_BIN, ` +
      'TG_MOCK_BIN, TG_SOURCE_DIR and TG_FIXTURES)');
    process.exit(2);
  }
  return v;
}

const TG_BIN = requireEnv('TG_BIN');
const TG_MOCK_BIN = requireEnv('TG_MOCK_BIN');
const TG_SOURCE_DIR = requireEnv('TG_SOURCE_DIR');
const TG_FIXTURES = requireEnv('TG_FIXTURES');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-compat-'));
const children = [];  // {name, proc, log}
let gatewayPort = 0;
let mockPort = 0;

// ---- cleanup: kill the children by PID, always ---------------------------------------------------

function killChildren() {
  for (const c of children) {
    if (c.proc.exitCode === null && c.proc.signalCode === null && !c.killedByUs) {
      c.killedByUs = true;
      try { process.kill(c.proc.pid, 'SIGKILL'); } catch { /* already gone */ }
    }
  }
}

process.on('exit', (code) => {
  killChildren();
  const failed = code !== 0 || (process.exitCode ?? 0) !== 0;
  if (failed) {
    for (const c of children) {
      try {
        const lines = fs.readFileSync(c.log, 'utf8').trimEnd().split('\n').slice(-40);
        const how = c.killedByUs ? 'killed by the test at the end'
          : `EXITED ON ITS OWN: code ${c.proc.exitCode}, signal ${c.proc.signalCode}`;
        process.stderr.write(`---- ${c.name} (pid ${c.proc.pid}, ${how}); last lines of ` +
          `${c.log} ----\n${lines.join('\n')}\n`);
      } catch { /* no log */ }
    }
    process.stderr.write(`openai_compat: temp dir kept: ${tmp}\n`);
  } else {
    try { fs.rmSync(tmp, { recursive: true, force: true }); } catch { /* ignore */ }
  }
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { killChildren(); process.exit(1); });
}
// Watchdog: nothing may hang. unref() so a finished run is not kept alive by it.
setTimeout(() => {
  process.stderr.write(`openai_compat: watchdog: run exceeded ${WATCHDOG_MS} ms, aborting\n`);
  killChildren();
  process.exit(1);
}, WATCHDOG_MS).unref();

// ---- fixtures ------------------------------------------------------------------------------------

function fixturePath(provider, name) {
  return path.join(TG_FIXTURES, provider, name);
}

function sseEvents(text) {
  // data payloads of an SSE body, in order, [DONE] excluded
  const out = [];
  for (const block of text.replace(/\r\n/g, '\n').split(/\n\n+/)) {
    const data = block.split('\n').filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    if (data && data !== '[DONE]') out.push(JSON.parse(data));
  }
  return out;
}

function expectedNonStream(provider) {
  const body = JSON.parse(fs.readFileSync(fixturePath(provider, 'chat.json'), 'utf8'));
  const u = body.usage;
  const exp = {
    content: body.choices[0].message.content,
    usage: { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens,
      total_tokens: u.total_tokens },
    cached: u.prompt_tokens_details?.cached_tokens,
  };
  assert.ok(exp.content.length > 0 && exp.usage.total_tokens > 0, `fixture ${provider}/chat.json`);
  return exp;
}

function expectedStream(provider) {
  const name = fs.existsSync(fixturePath(provider, 'stream_include_usage.sse'))
    ? 'stream_include_usage.sse' : 'stream.sse';
  const events = sseEvents(fs.readFileSync(fixturePath(provider, name), 'utf8'));
  let content = '';
  let usage = null;
  for (const ev of events) {
    for (const ch of ev.choices ?? []) content += ch.delta?.content ?? '';
    const u = ev.usage ?? ev.x_groq?.usage;
    if (u) usage = u;
  }
  assert.ok(content.length > 0 && usage, `fixture ${provider}/${name}`);
  return {
    content,
    usage: { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens,
      total_tokens: usage.total_tokens },
  };
}

function coreUsage(u) {
  assert.ok(u && typeof u === 'object', `usage is an object, got ${JSON.stringify(u)}`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    assert.equal(typeof u[k], 'number', `usage.${k} is a number in ${JSON.stringify(u)}`);
  }
  return { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens,
    total_tokens: u.total_tokens };
}

// ---- processes -----------------------------------------------------------------------------------

function startChild(name, bin, args) {
  const log = path.join(tmp, `${name}.log`);
  const fd = fs.openSync(log, 'a');
  const proc = spawn(bin, args, { stdio: ['ignore', fd, fd], cwd: tmp });
  fs.closeSync(fd);
  const c = { name, proc, log, spawnError: null, killedByUs: false };
  proc.on('error', (e) => { c.spawnError = e; });
  children.push(c);
  return c;
}

async function waitPortFile(c, file) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (c.spawnError) throw new Error(`${c.name}: cannot start: ${c.spawnError.message}`);
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) {
      throw new Error(`${c.name} exited early (code ${c.proc.exitCode}, signal ` +
        `${c.proc.signalCode}): ${fs.readFileSync(c.log, 'utf8')}`);
    }
    try {
      const text = fs.readFileSync(file, 'utf8');
      if (text.endsWith('\n')) {
        const port = Number.parseInt(text, 10);
        if (port > 0 && port < 65536) return port;
      }
    } catch { /* not yet */ }
    await sleep(25);
  }
  throw new Error(`${c.name}: no port file ${file} after ${STARTUP_TIMEOUT_MS} ms`);
}

// A fetch for both clients that refuses anything but the loopback address.
function loopbackFetch(input, init) {
  const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
  if (url.hostname !== '127.0.0.1') {
    return Promise.reject(new Error(`openai_compat: refusing non-loopback request to ${url}`));
  }
  return fetch(input, init);
}

async function mockRequests() {
  const r = await loopbackFetch(`http://127.0.0.1:${mockPort}/_mock/requests`);
  assert.equal(r.status, 200);
  return r.json();
}

let apiKey = '';

before(async () => {
  const mockPortFile = path.join(tmp, 'mock.port');
  const mock = startChild('mock', TG_MOCK_BIN,
    ['--port', '0', '--port-file', mockPortFile, '--fixtures', TG_FIXTURES]);
  mockPort = await waitPortFile(mock, mockPortFile);

  const base = `http://127.0.0.1:${mockPort}`;
  const config = {
    listen: '127.0.0.1:0',
    log_level: 'info',
    catalog: path.join(TG_SOURCE_DIR, 'config', 'catalog.json'),
    ledger: { path: path.join(tmp, 'ledger.db') },
    routing: { default_order: PROVIDERS },
    providers: {
      groq: { base_url: `${base}/groq/openai/v1`, api_key: 'mock-groq-key' },
      together: { base_url: `${base}/together/v1`, api_key: 'mock-together-key' },
      fireworks: { base_url: `${base}/fireworks/inference/v1`, api_key: 'mock-fireworks-key' },
    },
  };
  const cfgFile = path.join(tmp, 'tollgate.json');
  fs.writeFileSync(cfgFile, JSON.stringify(config, null, 2));

  // a real tollgate key, as an app would use (auth is on by default)
  apiKey = execFileSync(TG_BIN, ['keys', 'create', '--name', 'compat', '--ledger',
    path.join(tmp, 'ledger.db')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  assert.match(apiKey, /^tg-[0-9a-f]{12}-[0-9a-f]{40}$/);

  const gwPortFile = path.join(tmp, 'tollgate.port');
  const gw = startChild('tollgate', TG_BIN, ['serve', '--config', cfgFile,
    '--listen', '127.0.0.1:0', '--port-file', gwPortFile,
    '--ledger', path.join(tmp, 'ledger.db')]);
  gatewayPort = await waitPortFile(gw, gwPortFile);
});

after(() => { killChildren(); });

function client() {
  return new OpenAI({
    baseURL: `http://127.0.0.1:${gatewayPort}/v1`,
    apiKey,
    maxRetries: 0,
    timeout: TEST_TIMEOUT_MS,
    fetch: loopbackFetch,
  });
}

const MSG = [{ role: 'user', content: 'Say hello.' }];
const T = { timeout: TEST_TIMEOUT_MS };

// ---- non-streamed ----------------------------------------------------------------------------------

function checkCompletion(c, provider) {
  const exp = expectedNonStream(provider);
  assert.equal(c.object, 'chat.completion');
  assert.equal(typeof c.id, 'string');
  assert.ok(c.id.length > 0);
  assert.equal(typeof c.created, 'number');
  assert.equal(c.model, MODEL, 'response model = the requested model minus the :provider suffix');
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].index, 0);
  assert.equal(c.choices[0].message.role, 'assistant');
  assert.equal(c.choices[0].message.content, exp.content);
  assert.equal(c.choices[0].finish_reason, 'stop');
  assert.deepEqual(coreUsage(c.usage), exp.usage);
  if (exp.cached !== undefined) {
    assert.equal(c.usage.prompt_tokens_details?.cached_tokens, exp.cached,
      'usage.prompt_tokens_details.cached_tokens from the fixture');
  }
}

for (const provider of PROVIDERS) {
  test(`non-streaming via model suffix "${MODEL}:${provider}"`, T, async () => {
    const { data, response } = await client().chat.completions
      .create({ model: `${MODEL}:${provider}`, messages: MSG }).withResponse();
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-tollgate-provider'), provider);
    assert.match(response.headers.get('x-tollgate-request-id') ?? '', /.+/);
    checkCompletion(data, provider);
  });

  test(`non-streaming via extra body field provider="${provider}"`, T, async () => {
    const { data, response } = await client().chat.completions
      .create({ model: MODEL, messages: MSG, provider }).withResponse();
    assert.equal(response.headers.get('x-tollgate-provider'), provider);
    checkCompletion(data, provider);
    // what reached the upstream: no `provider` field, the provider's own model id
    const reqs = await mockRequests();
    const last = reqs.filter((r) => r.provider === provider).at(-1);
    assert.ok(last, `the mock saw a ${provider} request`);
    const body = typeof last.body === 'string' ? JSON.parse(last.body) : last.body;
    assert.equal('provider' in body, false, 'provider field removed before forwarding');
    assert.equal(body.model, response.headers.get('x-tollgate-model'));
  });
}

// ---- streamed ----------------------------------------------------------------------------------------

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

function checkChunks(chunks, provider, includeUsage) {
  const exp = expectedStream(provider);
  assert.ok(chunks.length >= 2, `got ${chunks.length} chunks`);
  let content = '';
  const finishes = [];
  const usageChunks = [];
  for (const ch of chunks) {
    assert.equal(ch.object, 'chat.completion.chunk');
    assert.equal(typeof ch.id, 'string');
    assert.equal(ch.model, MODEL);
    assert.ok(Array.isArray(ch.choices), 'choices is an array');
    for (const c of ch.choices) {
      content += c.delta?.content ?? '';
      if (c.finish_reason !== null && c.finish_reason !== undefined) finishes.push(c.finish_reason);
    }
    if (ch.usage !== null && ch.usage !== undefined) usageChunks.push(ch);
  }
  assert.equal(content, exp.content);
  assert.deepEqual(finishes, ['stop'], 'exactly one finish_reason, and it is "stop"');
  if (includeUsage) {
    assert.equal(usageChunks.length, 1, 'exactly one chunk carries usage');
    const last = chunks.at(-1);
    assert.equal(usageChunks[0], last, 'the usage chunk is the last chunk');
    assert.deepEqual(last.choices, [], 'the usage chunk has empty choices');
    assert.deepEqual(coreUsage(last.usage), exp.usage);
  } else {
    assert.equal(usageChunks.length, 0,
      `no usage chunk without stream_options.include_usage, got ${JSON.stringify(usageChunks.map((c) => c.usage))}`);
  }
}

for (const provider of PROVIDERS) {
  test(`streaming with include_usage (${provider})`, T, async () => {
    const { data: stream, response } = await client().chat.completions.create({
      model: `${MODEL}:${provider}`, messages: MSG, stream: true,
      stream_options: { include_usage: true },
    }).withResponse();
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.equal(response.headers.get('x-tollgate-provider'), provider);
    checkChunks(await collect(stream), provider, true);
  });

  test(`streaming without include_usage (${provider})`, T, async () => {
    const stream = await client().chat.completions.create({
      model: `${MODEL}:${provider}`, messages: MSG, stream: true,
    });
    checkChunks(await collect(stream), provider, false);
  });
}

// A paced stream: after the first chunk, the gateway's engine writes each chunk to the socket
// itself (src/stream_direct.c). The SDK's own HTTP and SSE parsing must see the same stream,
// token by token and as it is produced.
test('paced stream (chunks written by the engine) through the SDK', T, async () => {
  const n = 5, ms = 60;
  const stream = await client().chat.completions.create({
    model: `${MODEL}:groq`, stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: `Stream please. mock:paced-${n}-${ms}` }],
  });
  const toks = [];
  const times = [];
  let usage = null;
  for await (const ch of stream) {
    assert.equal(ch.object, 'chat.completion.chunk');
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
      const t = c.delta?.content ?? '';
      if (t.startsWith('tok')) { toks.push(t); times.push(performance.now()); }
    }
  }
  assert.deepEqual(toks, Array.from({ length: n }, (_, i) => `tok${i + 1} `));
  assert.ok(times.at(-1) - times[0] > (n - 1) * ms * 0.5,
    `tokens arrived together (${Math.round(times.at(-1) - times[0])} ms apart), not as produced`);
  assert.ok(usage && usage.completion_tokens > 0, `usage chunk: ${JSON.stringify(usage)}`);
});

test('Together stream: finish_reason is "stop", never Together\'s "eos"', T, async () => {
  const stream = await client().chat.completions.create({
    model: MODEL, provider: 'together', messages: MSG, stream: true,
    stream_options: { include_usage: true },
  });
  const reasons = [];
  for await (const ch of stream) {
    for (const c of ch.choices) if (c.finish_reason != null) reasons.push(c.finish_reason);
  }
  assert.deepEqual(reasons, ['stop']);
});

for (const provider of PROVIDERS) {
  test(`SDK stream helper chat.completions.stream() + finalChatCompletion() (${provider})`, T,
    async () => {
      const runner = client().chat.completions.stream({
        model: `${MODEL}:${provider}`, messages: MSG, stream_options: { include_usage: true },
      });
      let deltas = '';
      runner.on('content', (delta) => { deltas += delta; });
      const final = await runner.finalChatCompletion();
      const exp = expectedStream(provider);
      assert.equal(deltas, exp.content);
      assert.equal(final.choices[0].message.content, exp.content);
      assert.equal(final.choices[0].message.role, 'assistant');
      assert.equal(final.choices[0].finish_reason, 'stop');
      assert.equal(final.model, MODEL);
      assert.deepEqual(coreUsage(final.usage), exp.usage);
      assert.equal(await runner.finalContent(), exp.content);
    });
}

// ---- errors ------------------------------------------------------------------------------------------

function checkNotFound(err, model) {
  assert.ok(err instanceof NotFoundError, `NotFoundError expected, got ${err?.constructor?.name}: ${err}`);
  assert.ok(err instanceof APIError);
  assert.equal(err.status, 404);
  assert.equal(typeof err.error?.message, 'string', 'error.message is a string');
  assert.ok(err.error.message.includes(model), `error.message names the model: ${err.error.message}`);
  assert.ok(err.message.includes(err.error.message), 'the SDK surfaces error.message');
  assert.equal(typeof err.type, 'string', 'error.type is a string');
  assert.ok(err.code === null || typeof err.code === 'string', 'error.code is a string or null');
  assert.ok(err.param === null || typeof err.param === 'string', 'error.param is a string or null');
  assert.equal(err.headers?.get('x-tollgate-error-source'), 'caller');
}

test('unknown model -> NotFoundError (404) with error.message', T, async () => {
  const model = 'no-such-org/no-such-model';
  await assert.rejects(client().chat.completions.create({ model, messages: MSG }),
    (err) => { checkNotFound(err, model); return true; });
});

test('unknown model, stream=true -> NotFoundError (404) before any chunk', T, async () => {
  const model = 'no-such-org/no-such-model-streamed';
  await assert.rejects(async () => {
    const stream = await client().chat.completions.create({ model, messages: MSG, stream: true });
    for await (const _ of stream) { /* must not get here */ }
  }, (err) => { checkNotFound(err, model); return true; });
});

// ---- @huggingface/inference (bonus) ---------------------------------------------------------------
// With endpointUrl the client talks OpenAI chat-completions to that URL (".../v1" gets
// "/chat/completions" appended) and never contacts the Hub. It refuses `provider` together with
// endpointUrl, so the gateway's provider is chosen by the model suffix.

function hf() {
  return new InferenceClient(apiKey, { endpointUrl: `http://127.0.0.1:${gatewayPort}/v1` });
}
const HF_OPTS = () => ({ fetch: loopbackFetch, retry_on_error: false });

for (const provider of PROVIDERS) {
  test(`@huggingface/inference chatCompletion (${provider})`, T, async () => {
    const out = await hf().chatCompletion({ model: `${MODEL}:${provider}`, messages: MSG },
      HF_OPTS());
    const exp = expectedNonStream(provider);
    assert.equal(out.choices[0].message.content, exp.content);
    assert.equal(out.choices[0].finish_reason, 'stop');
    assert.equal(out.model, MODEL);
    assert.deepEqual(coreUsage(out.usage), exp.usage);
  });
}

test('@huggingface/inference chatCompletionStream with include_usage (together)', T, async () => {
  const provider = 'together';
  let content = '';
  let usage = null;
  const reasons = [];
  for await (const ch of hf().chatCompletionStream({
    model: `${MODEL}:${provider}`, messages: MSG, stream_options: { include_usage: true },
  }, HF_OPTS())) {
    for (const c of ch.choices ?? []) {
      content += c.delta?.content ?? '';
      if (c.finish_reason != null) reasons.push(c.finish_reason);
    }
    if (ch.usage) usage = ch.usage;
  }
  const exp = expectedStream(provider);
  assert.equal(content, exp.content);
  assert.deepEqual(reasons, ['stop']);
  assert.deepEqual(coreUsage(usage), exp.usage);
});

test('@huggingface/inference unknown model -> ProviderApiError, status 404', T, async () => {
  // The HF client's non-streamed path puts the OpenAI-style error body in httpResponse.body
  // (its message text only quotes string-valued `error`); the streamed path quotes
  // error.message in its own message.
  const model = 'no-such-org/hf-model';
  await assert.rejects(hf().chatCompletion({ model, messages: MSG }, HF_OPTS()), (err) => {
    assert.ok(err instanceof InferenceClientProviderApiError, `got ${err}`);
    assert.equal(err.httpResponse?.status, 404, `status 404 expected: ${err}`);
    assert.match(err.httpResponse.body?.error?.message ?? '', /no-such-org\/hf-model/);
    return true;
  });
  await assert.rejects(async () => {
    for await (const _ of hf().chatCompletionStream({ model, messages: MSG }, HF_OPTS())) {
      /* must not get here */
    }
  }, (err) => {
    assert.ok(err instanceof InferenceClientProviderApiError, `got ${err}`);
    assert.equal(err.httpResponse?.status, 404);
    assert.match(err.message, /no-such-org\/hf-model/);
    return true;
  });
});

// ---- models (late on purpose: a crash here must not take the tests above down with it) ----------

test('models.list() iterates the catalog', T, async () => {
  const catalog = JSON.parse(fs.readFileSync(path.join(TG_SOURCE_DIR, 'config', 'catalog.json'),
    'utf8'));
  // the gateway lists the models its configured providers serve (here: the cloud three)
  catalog.models = catalog.models.filter((m) => Object.keys(m.providers).some((p) => PROVIDERS.includes(p)));
  const seen = [];
  for await (const m of client().models.list()) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.id, 'string');
    assert.equal(typeof m.created, 'number');
    assert.equal(typeof m.owned_by, 'string');
    seen.push(m);
  }
  assert.deepEqual(seen.map((m) => m.id).sort(), catalog.models.map((m) => m.id).sort());
  for (const cm of catalog.models) {
    const m = seen.find((x) => x.id === cm.id);
    assert.equal(m.owned_by, cm.owned_by);
    assert.equal(m.created, cm.created);
  }
});

// ---- last: both processes must have survived everything above ------------------------------------

test('the gateway and the mock are still running after all requests', T, async () => {
  await sleep(50);  // let a just-happened exit be noticed
  for (const c of children) {
    assert.equal(c.proc.exitCode, null, `${c.name} exited with code ${c.proc.exitCode}`);
    assert.equal(c.proc.signalCode, null, `${c.name} died from signal ${c.proc.signalCode}`);
  }
});
