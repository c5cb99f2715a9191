// Self-test of server.mjs: runs the real server and speaks HTTP to it.
// Assertions are built by hand with node:crypto, the way the operator builds
// them around a KMS signature, so both the good and the broken encodings the
// server must reject are easy to produce.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

const SERVER = path.join(import.meta.dirname, '..', 'server.mjs');
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const OKTA_AUD = 'The audience claim for client_assertion must be the endpoint invoked for the request.';
const OKTA_KID = 'The client_assertion JWT kid is invalid.';

const b64url = (data) => Buffer.from(data).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

// ------------------------------------------------------------------ helpers

async function startServer({ port = 0, state } = {}) {
  const args = [SERVER, '--port', String(port), ...(state ? ['--state', state] : [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const origin = await new Promise((resolve, reject) => {
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = /^listening (http:\/\/127\.0\.0\.1:\d+)$/m.exec(stdout);
      if (match) resolve(match[1]);
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
  });
  return {
    origin,
    port: Number(new URL(origin).port),
    issuer: `${origin}/oauth2/default`,
    tokenUrl: `${origin}/oauth2/default/v1/token`,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

const CURVES = { ES256: ['P-256', 'sha256', 32], ES384: ['P-384', 'sha384', 48], ES512: ['P-521', 'sha512', 66] };

// A key pair and its public JWK, kid = RFC 7638 thumbprint.
function makeKey(alg) {
  const { privateKey, publicKey } = alg.startsWith('ES')
    ? generateKeyPairSync('ec', { namedCurve: CURVES[alg][0] })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = publicKey.export({ format: 'jwk' });
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  const kid = b64url(createHash('sha256').update(JSON.stringify(members)).digest());
  return { alg, privateKey, kid, jwk: { ...jwk, alg, use: 'sig', kid } };
}

// A compact JWS client assertion; every claim and header member can be overridden
// (undefined removes it), and `der` signs ECDSA in DER form as KMS returns it.
function assertion(key, clientId, aud, { header = {}, claims = {}, der = false } = {}) {
  const t = now();
  const h = JSON.parse(JSON.stringify({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header }));
  const c = JSON.parse(JSON.stringify({ iss: clientId, sub: clientId, aud, iat: t, exp: t + 300, jti: randomUUID(), ...claims }));
  const input = `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(c))}`;
  const hash = `sha${h.alg.slice(2)}`;
  const signature = h.alg.startsWith('ES')
    ? sign(hash, Buffer.from(input), { key: key.privateKey, dsaEncoding: der ? 'der' : 'ieee-p1363' })
    : sign(hash, Buffer.from(input), key.privateKey);
  return `${input}.${b64url(signature)}`;
}

async function postForm(url, fields, headers = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(fields),
  });
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: response.status, headers: response.headers, body };
}

// scope null leaves the parameter out.
function requestToken(server, clientAssertion, scope = 'okta.users.read', extra = {}) {
  return postForm(server.tokenUrl, {
    grant_type: 'client_credentials',
    ...(scope === null ? {} : { scope }),
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: clientAssertion,
    ...extra,
  });
}

async function admin(server, method, route, body) {
  const response = await fetch(`${server.origin}${route}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json() };
}

async function register(server, clientId, keys, { scopes = ['okta.users.read', 'okta.users.manage'], ttl = 30 } = {}) {
  const response = await admin(server, 'POST', '/admin/clients', {
    client_id: clientId,
    jwks: { keys: keys.map((key) => key.jwk) },
    scopes,
    token_ttl_seconds: ttl,
  });
  assert.equal(response.status, 200, JSON.stringify(response.body));
}

function introspect(server, token) {
  const basic = Buffer.from('introspector:introspector-secret').toString('base64');
  return postForm(`${server.issuer}/v1/introspect`, { token }, { authorization: `Basic ${basic}` });
}

function assertInvalidClient(response, description) {
  if (process.env.DEBUG_RESPONSES) console.log(response.status, response.body);
  assert.equal(response.status, 401, JSON.stringify(response.body));
  assert.equal(response.body.error, 'invalid_client');
  if (description) assert.equal(response.body.error_description, description);
}

// ------------------------------------------------------------------ tests

describe('oauth server', () => {
  let server;
  const rsa = makeKey('RS256');
  const ec = makeKey('ES256');

  before(async () => {
    server = await startServer();
    await register(server, 'app-rsa', [rsa]);
    await register(server, 'app-ec', [ec], { ttl: 20 });
  });
  after(() => server.stop());

  test('serves Okta-shaped discovery', async () => {
    const config = await (await fetch(`${server.issuer}/.well-known/openid-configuration`)).json();
    assert.equal(config.issuer, server.issuer);
    assert.equal(config.token_endpoint, server.tokenUrl);
    assert.equal(config.introspection_endpoint, `${server.issuer}/v1/introspect`);
    assert.equal(config.jwks_uri, `${server.issuer}/v1/keys`);
    assert.deepEqual(config.token_endpoint_auth_signing_alg_values_supported, ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512']);
  });

  for (const [clientId, key, ttl] of [['app-rsa', rsa, 30], ['app-ec', ec, 20]]) {
    test(`${key.alg} assertion gets an Okta-shaped token with the client's TTL`, async () => {
      const response = await requestToken(server, assertion(key, clientId, server.tokenUrl), 'okta.users.read okta.users.manage');
      assert.equal(response.status, 200, JSON.stringify(response.body));
      assert.deepEqual(Object.keys(response.body), ['token_type', 'expires_in', 'access_token', 'scope']);
      assert.equal(response.body.token_type, 'Bearer');
      assert.equal(response.body.expires_in, ttl);
      assert.equal(response.body.scope, 'okta.users.read okta.users.manage');
      assert.equal(response.headers.get('cache-control'), 'no-store');

      const info = await introspect(server, response.body.access_token);
      assert.equal(info.status, 200);
      assert.equal(info.body.active, true);
      assert.equal(info.body.client_id, clientId);
      assert.equal(info.body.scope, 'okta.users.read okta.users.manage');
      assert.ok(Math.abs(info.body.exp - (now() + ttl)) <= 2, `exp ${info.body.exp}`);
    });
  }

  test('ES384, ES512, RS384 and RS512 are accepted', async () => {
    for (const alg of ['ES384', 'ES512', 'RS384', 'RS512']) {
      const key = makeKey(alg);
      await register(server, `app-${alg}`, [key]);
      const response = await requestToken(server, assertion(key, `app-${alg}`, server.tokenUrl));
      assert.equal(response.status, 200, `${alg}: ${JSON.stringify(response.body)}`);
    }
  });

  test('client_id in the form may accompany the assertion', async () => {
    const response = await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl), 'okta.users.read', { client_id: 'app-rsa' });
    assert.equal(response.status, 200);
  });

  test('aud must be exactly the token endpoint', async () => {
    for (const aud of [server.issuer, `${server.tokenUrl}/`, 'https://example.okta.com/oauth2/default/v1/token', [server.tokenUrl]]) {
      assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', aud)), OKTA_AUD);
    }
  });

  test('a jti is single-use', async () => {
    const jwt = assertion(ec, 'app-ec', server.tokenUrl);
    assert.equal((await requestToken(server, jwt)).status, 200);
    assertInvalidClient(await requestToken(server, jwt), 'The client_assertion token has already been used.');
  });

  test('exp is required, not past, at most one hour ahead', async () => {
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { exp: undefined } })));
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { iat: now() - 600, exp: now() - 60 } })),
      'The client_assertion token is expired.');
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { exp: now() + 3660 } })),
      'The client_assertion token has an expiration too far into the future.');
    assert.equal((await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { exp: now() + 3540 } }))).status, 200);
  });

  test('iat must not be in the future', async () => {
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { iat: now() + 120 } })));
  });

  test('iss and sub must both be the client id', async () => {
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { iss: 'someone-else' } })));
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { claims: { sub: 'app-ec' } })));
  });

  test('kid must be present and name a key of the client', async () => {
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { header: { kid: 'unknown' } })), OKTA_KID);
    assertInvalidClient(await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl, { header: { kid: undefined } })), OKTA_KID);
    // The kid of another client's key is no better.
    assertInvalidClient(await requestToken(server, assertion({ ...rsa, kid: ec.kid }, 'app-rsa', server.tokenUrl)), OKTA_KID);
  });

  test('with several keys the kid picks the one that verifies', async () => {
    const [old, current] = [makeKey('RS256'), makeKey('ES384')];
    await register(server, 'app-two-keys', [old, current]);
    for (const key of [old, current]) {
      assert.equal((await requestToken(server, assertion(key, 'app-two-keys', server.tokenUrl))).status, 200);
    }
    assertInvalidClient(await requestToken(server, assertion({ ...current, kid: undefined }, 'app-two-keys', server.tokenUrl)), OKTA_KID);
    assertInvalidClient(await requestToken(server, assertion({ ...current, kid: old.kid }, 'app-two-keys', server.tokenUrl)));
  });

  test('the signature must verify', async () => {
    const impostor = { ...makeKey('RS256'), kid: rsa.kid };
    assertInvalidClient(await requestToken(server, assertion(impostor, 'app-rsa', server.tokenUrl)), 'The client_assertion signature is invalid.');
    // KMS returns ECDSA signatures DER-encoded; JWS needs raw r||s.
    assertInvalidClient(await requestToken(server, assertion(ec, 'app-ec', server.tokenUrl, { der: true })));
  });

  test('only RS*/ES* algorithms', async () => {
    const jwt = assertion(rsa, 'app-rsa', server.tokenUrl);
    const [, payload, signature] = jwt.split('.');
    for (const alg of ['none', 'HS256', 'PS256']) {
      const header = b64url(JSON.stringify({ alg, kid: rsa.kid, typ: 'JWT' }));
      assertInvalidClient(await requestToken(server, `${header}.${payload}.${signature}`));
    }
  });

  test('a base64-wrapped JWT is not an assertion', async () => {
    const wrapped = Buffer.from(assertion(rsa, 'app-rsa', server.tokenUrl)).toString('base64');
    assertInvalidClient(await requestToken(server, wrapped), 'The client_assertion token is malformed.');
  });

  test('client_assertion_type must be jwt-bearer', async () => {
    const response = await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl), 'okta.users.read', { client_assertion_type: 'jwt' });
    assert.equal(response.status, 400);
    assert.equal(response.body.error, 'invalid_request');
  });

  test('an unknown client is invalid_client', async () => {
    assertInvalidClient(await requestToken(server, assertion(rsa, 'nobody', server.tokenUrl)));
  });

  test('scopes must be among the client\'s', async () => {
    for (const scope of ['okta.groups.manage', 'okta.users.read okta.apps.read', '', null]) {
      const response = await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl), scope);
      assert.equal(response.status, 400, `scope ${scope}`);
      assert.equal(response.body.error, 'invalid_scope');
      assert.equal(typeof response.body.error_description, 'string');
    }
  });

  test('stats count token requests and issued tokens per client', async () => {
    const key = makeKey('ES256');
    await register(server, 'app-stats', [key]);
    assert.deepEqual((await admin(server, 'GET', '/admin/stats?client_id=app-stats')).body, { token_requests: 0, tokens_issued: 0 });
    await requestToken(server, assertion(key, 'app-stats', server.tokenUrl));
    await requestToken(server, assertion(key, 'app-stats', server.tokenUrl), 'not-allowed');
    await requestToken(server, assertion(key, 'app-stats', server.issuer));
    assert.deepEqual((await admin(server, 'GET', '/admin/stats?client_id=app-stats')).body, { token_requests: 3, tokens_issued: 1 });
  });

  test('faults answer the next n token requests, then the server recovers', async () => {
    const reset = now() + 30;
    const fault = await admin(server, 'POST', '/admin/faults', {
      count: 2,
      status: 429,
      headers: { 'X-Rate-Limit-Limit': '600', 'X-Rate-Limit-Remaining': '0', 'X-Rate-Limit-Reset': String(reset) },
      body: { errorCode: 'E0000047', errorSummary: 'API call exceeded rate limit due to too many requests.' },
    });
    assert.equal(fault.status, 200);
    for (let i = 0; i < 2; i += 1) {
      const response = await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl));
      assert.equal(response.status, 429);
      assert.equal(response.headers.get('x-rate-limit-reset'), String(reset));
      assert.equal(response.headers.get('x-rate-limit-remaining'), '0');
      assert.equal(response.body.errorCode, 'E0000047');
    }
    assert.equal((await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl))).status, 200);

    await admin(server, 'POST', '/admin/faults', { count: 5, status: 503, body: '<html>down</html>', headers: { 'content-type': 'text/html' } });
    const down = await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl));
    assert.equal(down.status, 503);
    assert.equal(down.body, '<html>down</html>');
    assert.equal((await admin(server, 'DELETE', '/admin/faults')).status, 200);
    assert.equal((await requestToken(server, assertion(rsa, 'app-rsa', server.tokenUrl))).status, 200);
  });

  test('re-registering a client takes effect at once', async () => {
    const first = makeKey('RS256');
    const second = makeKey('ES256');
    await register(server, 'app-rotate', [first]);
    assert.equal((await requestToken(server, assertion(first, 'app-rotate', server.tokenUrl))).status, 200);
    await register(server, 'app-rotate', [second], { scopes: ['okta.users.read'], ttl: 25 });
    assertInvalidClient(await requestToken(server, assertion(first, 'app-rotate', server.tokenUrl)), OKTA_KID);
    const response = await requestToken(server, assertion(second, 'app-rotate', server.tokenUrl));
    assert.equal(response.status, 200);
    assert.equal(response.body.expires_in, 25);
  });

  test('the admin API rejects bad registrations', async () => {
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [] } })).status, 400);
    const privateJwk = { ...rsa.privateKey.export({ format: 'jwk' }), kid: rsa.kid, alg: 'RS256', use: 'sig' };
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [privateJwk] } })).status, 400);
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [rsa.jwk] }, token_ttl_seconds: 0 })).status, 400);
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [rsa.jwk] }, scopes: ['a b'] })).status, 400);
    const { kid: _kid, ...withoutKid } = rsa.jwk;
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [withoutKid] } })).status, 400);
    assert.equal((await admin(server, 'POST', '/admin/clients', { client_id: 'x', jwks: { keys: [rsa.jwk, { ...ec.jwk, kid: rsa.kid }] } })).status, 400);
  });

  test('introspection of garbage is inactive, and needs the introspector secret', async () => {
    assert.deepEqual((await introspect(server, 'not-a-token')).body, { active: false });
    const response = await postForm(`${server.issuer}/v1/introspect`, { token: 'x' }, {
      authorization: `Basic ${Buffer.from('introspector:wrong').toString('base64')}`,
    });
    assert.equal(response.status, 401);
  });
});

test('a restart with --state keeps clients, tokens, spent jtis and counters', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oauth-server-test-'));
  const state = path.join(dir, 'state.json');
  const key = makeKey('ES256');
  let server = await startServer({ state });
  try {
    await register(server, 'app-restart', [key], { ttl: 30 });
    const jwt = assertion(key, 'app-restart', server.tokenUrl);
    const issued = await requestToken(server, jwt);
    assert.equal(issued.status, 200);
    await server.stop();

    server = await startServer({ port: server.port, state });
    assert.equal((await introspect(server, issued.body.access_token)).body.active, true);
    assertInvalidClient(await requestToken(server, jwt));
    assert.equal((await requestToken(server, assertion(key, 'app-restart', server.tokenUrl))).status, 200);
    assert.deepEqual((await admin(server, 'GET', '/admin/stats?client_id=app-restart')).body, { token_requests: 3, tokens_issued: 2 });
  } finally {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('tokens expire after their TTL', { timeout: 20000 }, async () => {
  const server = await startServer();
  try {
    const key = makeKey('RS256');
    await register(server, 'app-short', [key], { ttl: 2 });
    const response = await requestToken(server, assertion(key, 'app-short', server.tokenUrl));
    assert.equal(response.body.expires_in, 2);
    assert.equal((await introspect(server, response.body.access_token)).body.active, true);
    await new Promise((resolve) => { setTimeout(resolve, 3500); });
    assert.equal((await introspect(server, response.body.access_token)).body.active, false);
  } finally {
    await server.stop();
  }
});
