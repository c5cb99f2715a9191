// A real OAuth 2.0 authorization server for the tests and the demo.
//
// oidc-provider (OpenID-certified) does the protocol work: client
// authentication with private_key_jwt, signature verification, jti replay
// detection, the client_credentials grant and RFC 7662 introspection. This
// file shapes it like an Okta custom authorization server (paths, response
// shape, error descriptions) and adds the rules where Okta is stricter than
// oidc-provider's defaults, plus a test-only admin API.
//
//   node server.mjs --port N [--state FILE]
//
// Listens on 127.0.0.1 only (N=0: any free port) and prints
// `listening http://127.0.0.1:PORT` once ready. With --state, clients, issued
// tokens, spent jtis and counters survive a restart on the same port.
//
// OAuth (issuer http://127.0.0.1:PORT/oauth2/default):
//   POST /oauth2/default/v1/token        client_credentials + private_key_jwt
//   POST /oauth2/default/v1/introspect   Basic introspector:introspector-secret
//   GET  /oauth2/default/v1/keys, /oauth2/default/.well-known/openid-configuration
// Admin (tests only, no auth):
//   POST   /admin/clients  {"client_id","jwks":{"keys":[…]},"scopes":[…],"token_ttl_seconds":N}
//                          registers or replaces a client, effective at once
//   GET    /admin/stats?client_id=X  -> {"token_requests":n,"tokens_issued":n}
//   POST   /admin/faults   {"count":n,"status":429,"headers":{…},"body":{…}|"text"}
//                          the next n token requests get that answer instead
//   DELETE /admin/faults

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair } from 'jose';
import Provider, { errors } from 'oidc-provider';

const MOUNT = '/oauth2/default';
// Okta lists exactly these for client assertions; no PS*, no HS* for private_key_jwt.
const ASSERTION_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512'];
const MAX_ASSERTION_LIFETIME = 3600; // Okta: exp at most one hour ahead
const CLOCK_SKEW = 5; // seconds tolerated on exp/nbf/iat; loopback clocks agree
const DEFAULT_TTL = 3600;
const MAX_BODY = 64 * 1024;
const INTROSPECTOR = { id: 'introspector', secret: 'introspector-secret' };

const OKTA = {
  aud: 'The audience claim for client_assertion must be the endpoint invoked for the request.',
  kid: 'The client_assertion JWT kid is invalid.',
  signature: 'The client_assertion signature is invalid.',
  expired: 'The client_assertion token is expired.',
  tooLong: 'The client_assertion token has an expiration too far into the future.',
  iat: 'The client_assertion token has an issued at time in the future.',
  replay: 'The client_assertion token has already been used.',
  malformed: 'The client_assertion token is malformed.',
};

const now = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- state

// Everything that must survive a restart lives in one JSON document, written
// atomically (temp file + rename) after every change. Writes are small and
// the traffic is a test's, so synchronous I/O keeps it simple and ordered.
class State {
  constructor(file) {
    this.file = file;
    let saved = {};
    if (file && fs.existsSync(file)) {
      const text = fs.readFileSync(file, 'utf8');
      if (text.trim()) saved = JSON.parse(text);
    }
    this.signingKey = saved.signingKey; // private JWK for the server's own JWTs
    this.clients = saved.clients ?? {}; // id -> { jwks, scopes, ttl }
    this.stats = saved.stats ?? {}; // id -> { token_requests, tokens_issued }
    this.models = saved.models ?? {}; // oidc-provider model -> id -> { payload, expiresAt }
  }

  counters(clientId) {
    this.stats[clientId] ??= { token_requests: 0, tokens_issued: 0 };
    return this.stats[clientId];
  }

  save() {
    if (!this.file) return;
    for (const entries of Object.values(this.models)) {
      for (const [id, entry] of Object.entries(entries)) {
        if (entry.expiresAt && entry.expiresAt <= now()) delete entries[id];
      }
    }
    const { signingKey, clients, stats, models } = this;
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ signingKey, clients, stats, models }));
    fs.renameSync(tmp, this.file);
  }
}

// The metadata oidc-provider sees for a client registered through the admin API.
function clientMetadata(clientId, client) {
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: client.jwks,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
}

// oidc-provider storage adapter backed by State. Clients come from the admin
// registry; every other model (issued tokens, spent jtis) is kept with its
// expiry. oidc-provider caches Client objects by a hash of their metadata, so
// a replaced client takes effect on the next request.
function adapterFor(state) {
  return class StateAdapter {
    constructor(model) {
      this.model = model;
    }

    get entries() {
      state.models[this.model] ??= {};
      return state.models[this.model];
    }

    async upsert(id, payload, expiresIn) {
      this.entries[id] = { payload, expiresAt: expiresIn ? now() + expiresIn : undefined };
      state.save();
    }

    async find(id) {
      if (this.model === 'Client') {
        const client = state.clients[id];
        return client && clientMetadata(id, client);
      }
      const entry = this.entries[id];
      if (!entry || (entry.expiresAt && entry.expiresAt <= now())) return undefined;
      return entry.payload;
    }

    async findByUid(uid) {
      return Object.values(this.entries).find((entry) => entry.payload.uid === uid)?.payload;
    }

    async findByUserCode(userCode) {
      return Object.values(this.entries).find((entry) => entry.payload.userCode === userCode)?.payload;
    }

    async consume(id) {
      if (this.entries[id]) {
        this.entries[id].payload.consumed = now();
        state.save();
      }
    }

    async destroy(id) {
      delete this.entries[id];
      state.save();
    }

    async revokeByGrantId(grantId) {
      for (const [id, entry] of Object.entries(this.entries)) {
        if (entry.payload.grantId === grantId) delete this.entries[id];
      }
      state.save();
    }
  };
}

// ---------------------------------------------------------------- Okta rules

function invalidClient(description, detail) {
  const error = new errors.InvalidClientAuth(detail ?? description);
  error.error_description = description;
  return error;
}

// Runs inside oidc-provider's client authentication, after it has found the
// client, checked iss, exp presence and the signature, and before it spends
// the jti. Adds what Okta requires beyond oidc-provider's defaults.
function assertOktaAssertion(ctx, claims, header, client) {
  // Okta accepts only the URL actually called; oidc-provider would also take
  // the issuer or an array containing either.
  const endpoint = ctx.oidc.urlFor(ctx.oidc.route);
  if (typeof claims.aud !== 'string' || claims.aud !== endpoint) {
    throw invalidClient(OKTA.aud, `aud ${JSON.stringify(claims.aud)} is not ${endpoint}`);
  }
  if (claims.sub !== client.clientId) {
    throw invalidClient('The client_assertion sub claim must be the client_id.');
  }
  if (typeof claims.exp !== 'number' || claims.exp - now() > MAX_ASSERTION_LIFETIME) {
    throw invalidClient(OKTA.tooLong);
  }
  if (claims.iat !== undefined && (typeof claims.iat !== 'number' || claims.iat > now() + CLOCK_SKEW)) {
    throw invalidClient(OKTA.iat);
  }
  // oidc-provider tries every key of the right type when kid is absent; Okta
  // requires kid and it must name one of the client's keys.
  if (!header.kid || !client.jwks.keys.some((key) => key.kid === header.kid)) {
    throw invalidClient(OKTA.kid);
  }
}

// oidc-provider reports most client-authentication failures with the generic
// description "client authentication failed" and the cause in error_detail.
// Okta says what was wrong; map the causes we know to Okta's wording.
function oktaDescription(detail = '') {
  if (/^(audience|list of audience)/.test(detail)) return OKTA.aud;
  if (/no applicable key found/.test(detail)) return OKTA.kid;
  if (/signature verification failed/.test(detail)) return OKTA.signature;
  if (/jwt expired/.test(detail)) return OKTA.expired;
  if (/must only be used once/.test(detail)) return OKTA.replay;
  if (/client not found/.test(detail)) return "Invalid value for 'client_id' parameter.";
  if (/alg mismatch/.test(detail)) return 'The client_assertion JWT alg is not allowed.';
  return `The client_assertion is invalid: ${detail}`;
}

// ---------------------------------------------------------------- provider

function createProvider(issuer, state) {
  const provider = new Provider(issuer, {
    adapter: adapterFor(state),
    clients: [{
      client_id: INTROSPECTOR.id,
      client_secret: INTROSPECTOR.secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    }],
    jwks: { keys: [state.signingKey] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientAuthMethods: ['private_key_jwt', 'client_secret_basic'],
    enabledJWA: { clientAuthSigningAlgValues: ASSERTION_ALGS },
    clockTolerance: CLOCK_SKEW,
    assertJwtClientAuthClaimsAndHeader: assertOktaAssertion,
    responseTypes: ['code'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      introspection: {
        enabled: true,
        // The built-in introspector may look at any token; a client at its own.
        allowedPolicy: (ctx, caller, token) =>
          caller.clientId === INTROSPECTOR.id || caller.clientId === token.clientId,
      },
    },
    routes: {
      authorization: '/v1/authorize',
      token: '/v1/token',
      introspection: '/v1/introspect',
      jwks: '/v1/keys',
      userinfo: '/v1/userinfo',
      end_session: '/v1/logout',
    },
    ttl: {
      ClientCredentials: (ctx, token, client) => state.clients[client.clientId]?.ttl ?? DEFAULT_TTL,
    },
  });

  // Replace the built-in client_credentials handler: oidc-provider lets through
  // scopes it does not know, while Okta answers invalid_scope for any scope the
  // client may not have. No scope at all is also invalid_scope on Okta when
  // the server has no default scopes, which ours never has.
  provider.registerGrantType('client_credentials', async (ctx) => {
    const { client, params } = ctx.oidc;
    const requested = [...new Set((params.scope ?? '').split(' ').filter(Boolean))];
    if (requested.length === 0) {
      throw new errors.InvalidScope(
        "The authorization server resource does not have any configured default scopes, 'scope' must be provided.",
      );
    }
    const allowed = new Set(state.clients[client.clientId]?.scopes ?? []);
    const refused = requested.filter((scope) => !allowed.has(scope));
    if (refused.length) {
      throw new errors.InvalidScope(
        `One or more scopes are not configured for the authorization server resource: ${refused.join(' ')}`,
        refused.join(' '),
      );
    }
    const token = new provider.ClientCredentials({ client, scope: requested.join(' ') });
    const accessToken = await token.save();
    ctx.body = {
      token_type: token.tokenType,
      expires_in: token.expiration,
      access_token: accessToken,
      scope: token.scope,
    };
  }, 'scope');

  provider.on('grant.success', (ctx) => {
    state.counters(ctx.oidc.client.clientId).tokens_issued += 1;
    state.save();
  });

  // Emitted synchronously while the error body is still an object we can edit.
  provider.on('grant.error', (ctx, error) => {
    if (error.error === 'invalid_client' && ctx.body?.error_description === 'client authentication failed') {
      ctx.body.error_description = oktaDescription(error.error_detail);
    }
  });

  return provider;
}

// ---------------------------------------------------------------- HTTP

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('request body too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const type = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json';
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body === undefined ? undefined : text);
}

// The client a token request is for: the assertion's sub (or iss), else client_id.
function requestingClient(form) {
  try {
    const claims = decodeJwt(form.get('client_assertion'));
    if (typeof claims.sub === 'string') return claims.sub;
    if (typeof claims.iss === 'string') return claims.iss;
  } catch {
    // not a JWT: fall back to client_id
  }
  return form.get('client_id') ?? undefined;
}

function isCompactJws(value) {
  try {
    decodeProtectedHeader(value);
    decodeJwt(value);
    return true;
  } catch {
    return false;
  }
}

async function handleToken(req, res, state) {
  const raw = await readBody(req);
  const form = new URLSearchParams(raw);
  const clientId = requestingClient(form);
  if (clientId !== undefined) {
    state.counters(clientId).token_requests += 1;
    state.save();
  }

  // Injected faults stand in for whatever sits in front of Okta's token
  // endpoint (rate limiter, outage), so they answer before any OAuth logic.
  if (state.fault && state.fault.remaining > 0) {
    const { status, headers, body } = state.fault;
    state.fault.remaining -= 1;
    send(res, status, body, headers);
    return false;
  }

  // A client_assertion that is not a compact JWS (for example a JWT wrapped in
  // base64 once more) is a failed client authentication on Okta; oidc-provider
  // would call it a malformed request instead.
  const assertion = form.get('client_assertion');
  if (assertion !== null && !isCompactJws(assertion)) {
    send(res, 401, { error: 'invalid_client', error_description: OKTA.malformed });
    return false;
  }

  // oidc-provider reads an already-consumed body from req.body.
  req.body = raw;
  return true;
}

function validateRegistration(body) {
  const { client_id: clientId, jwks, scopes = [], token_ttl_seconds: ttl = DEFAULT_TTL } = body ?? {};
  if (typeof clientId !== 'string' || !clientId || clientId === INTROSPECTOR.id) {
    return 'client_id must be a non-empty string (and not the introspector)';
  }
  // Okta: up to 50 keys per app, each with its own kid (assertions must name one).
  if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0 || jwks.keys.length > 50) {
    return 'jwks.keys must hold 1 to 50 keys';
  }
  const kids = jwks.keys.map((key) => key?.kid);
  if (kids.some((kid) => typeof kid !== 'string' || !kid) || new Set(kids).size !== kids.length) {
    return 'every key needs a kid, unique within the client';
  }
  if (!Array.isArray(scopes) || scopes.some((scope) => typeof scope !== 'string' || !/^[\x21\x23-\x5B\x5D-\x7E]+$/.test(scope))) {
    return 'scopes must be an array of scope tokens';
  }
  if (!Number.isInteger(ttl) || ttl <= 0) return 'token_ttl_seconds must be a positive integer';
  return { clientId, client: { jwks, scopes, ttl } };
}

async function handleAdmin(req, res, url, state, provider) {
  const route = `${req.method} ${url.pathname}`;
  const json = async () => {
    const text = await readBody(req);
    return text ? JSON.parse(text) : {};
  };

  if (route === 'POST /admin/clients') {
    const checked = validateRegistration(await json());
    if (typeof checked === 'string') return send(res, 400, { error: checked });
    // Let oidc-provider judge the metadata (JWK shapes, no private keys) now,
    // rather than failing the first token request later.
    try {
      await provider.Client.validate(clientMetadata(checked.clientId, checked.client));
    } catch (error) {
      return send(res, 400, { error: error.error_description ?? error.message });
    }
    state.clients[checked.clientId] = checked.client;
    state.save();
    return send(res, 200, { client_id: checked.clientId });
  }
  if (route === 'GET /admin/stats') {
    const clientId = url.searchParams.get('client_id');
    if (!clientId) return send(res, 400, { error: 'client_id query parameter required' });
    return send(res, 200, state.stats[clientId] ?? { token_requests: 0, tokens_issued: 0 });
  }
  if (route === 'POST /admin/faults') {
    const { count, status, headers = {}, body } = await json();
    if (!Number.isInteger(count) || count <= 0) return send(res, 400, { error: 'count must be a positive integer' });
    if (!Number.isInteger(status) || status < 200 || status > 599) return send(res, 400, { error: 'status must be an HTTP status' });
    state.fault = { remaining: count, status, headers, body };
    return send(res, 200, { faults: count });
  }
  if (route === 'DELETE /admin/faults') {
    state.fault = undefined;
    return send(res, 200, { faults: 0 });
  }
  return send(res, 404, { error: `no admin route ${route}` });
}

async function main() {
  const { values } = parseArgs({
    options: { port: { type: 'string', default: '0' }, state: { type: 'string' } },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad --port ${values.port}`);

  const state = new State(values.state);
  if (!state.signingKey) {
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    state.signingKey = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: randomBytes(8).toString('hex') };
    state.save();
  }

  let provider;
  let callback;
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://127.0.0.1');
      if (url.pathname.startsWith('/admin/')) {
        await handleAdmin(req, res, url, state, provider);
        return;
      }
      if (url.pathname !== MOUNT && !url.pathname.startsWith(`${MOUNT}/`)) {
        send(res, 404, { error: 'not_found', error_description: `nothing at ${url.pathname}` });
        return;
      }
      if (req.method === 'POST' && url.pathname === `${MOUNT}/v1/token`) {
        if (!(await handleToken(req, res, state))) return;
      }
      // Mount oidc-provider under MOUNT: it derives its own URLs from these.
      req.originalUrl = req.url;
      req.baseUrl = MOUNT;
      req.url = req.url.slice(MOUNT.length) || '/';
      await callback(req, res);
    } catch (error) {
      if (!res.headersSent) send(res, 400, { error: 'invalid_request', error_description: error.message });
      else res.destroy();
    }
  });

  server.listen(port, '127.0.0.1', () => {
    const origin = `http://127.0.0.1:${server.address().port}`;
    provider = createProvider(`${origin}${MOUNT}`, state);
    callback = provider.callback();
    process.stdout.write(`listening ${origin}\n`);
  });

  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      server.close();
      server.closeAllConnections();
      process.exit(0);
    });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
