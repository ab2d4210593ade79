// A real OpenID Connect provider (panva's certified `oidc-provider`) for parley's end-to-end tests.
//
//   node tests/oidc_provider/provider.mjs --port 0 --client-id parley --client-secret s3cret \
//       --redirect-uri http://127.0.0.1:7860/api/oidc/callback[,http://...] [--skip-consent]
//
// Every option can come from the environment instead: OIDC_PORT, OIDC_HOST, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET,
// OIDC_REDIRECT_URIS (comma separated), OIDC_POST_LOGOUT_REDIRECT_URIS, OIDC_SKIP_CONSENT=1.
// `--port 0` picks a free port; either way the one line `oidc provider ready on http://127.0.0.1:P` on stdout says
// where it listens (that URL is the issuer). Other lines (the library's notices) may appear on stdout/stderr.
//
// One static confidential client: authorization_code only, client_secret_basic (client_secret_post works too: the
// library accepts either for a client registered with one of them), PKCE optional (S256 when sent).
// Sign-in: the library's development interactions: any login name with any non-empty password, then a consent
// page (skipped with --skip-consent). The account's claims are sub = preferred_username = the login name,
// email = <login>@example.test, email_verified = true, name; they go in the ID token as well as /me (userinfo).
// SIGINT/SIGTERM close it (exit status 0).

import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: process.env.OIDC_HOST || '127.0.0.1' },
    port: { type: 'string', default: process.env.OIDC_PORT || '0' },
    'client-id': { type: 'string', default: process.env.OIDC_CLIENT_ID || 'parley' },
    'client-secret': { type: 'string', default: process.env.OIDC_CLIENT_SECRET },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
    'post-logout-redirect-uri': { type: 'string', multiple: true, default: [] },
    'skip-consent': { type: 'boolean', default: ['1', 'true', 'yes'].includes(process.env.OIDC_SKIP_CONSENT ?? '') },
  },
  strict: true,
});

const list = (values, envValue) => (values.length ? values : [envValue ?? ''])
  .flatMap((v) => v.split(','))
  .map((v) => v.trim())
  .filter(Boolean);

const redirectUris = list(args['redirect-uri'], process.env.OIDC_REDIRECT_URIS);
const postLogoutRedirectUris = list(args['post-logout-redirect-uri'], process.env.OIDC_POST_LOGOUT_REDIRECT_URIS);
const clientSecret = args['client-secret'];
if (!redirectUris.length || !clientSecret) {
  console.error('provider.mjs: --redirect-uri (or OIDC_REDIRECT_URIS) and --client-secret (or OIDC_CLIENT_SECRET) '
    + 'are required');
  process.exit(2);
}

const SCOPES = ['openid', 'profile', 'email'];
const CLAIMS = {
  openid: ['sub'],
  profile: ['name', 'preferred_username'],
  email: ['email', 'email_verified'],
};

// A fresh signing key for each run (instead of the library's fixed, published development keys).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwks = { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' }] };

// Listen first (so `--port 0` works), then build the provider with the issuer that names the real port.
let handler = (_req, res) => { res.writeHead(503).end('starting'); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(args.port), args.host, resolve);
});
const hostForUrl = args.host.includes(':') ? `[${args.host}]` : args.host;
const issuer = `http://${hostForUrl}:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: args['client-id'],
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    ...(postLogoutRedirectUris.length ? { post_logout_redirect_uris: postLogoutRedirectUris } : {}),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted as well
    id_token_signed_response_alg: 'RS256',
  }],
  jwks,
  scopes: SCOPES,
  claims: CLAIMS,
  // The scope-granted claims (profile, email) go into the ID token too, not only into /me.
  conformIdTokenClaims: false,
  pkce: { required: () => false },
  features: {
    devInteractions: { enabled: true }, // the built-in login form (any login) and consent page
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: sub,
          name: `${sub[0]?.toUpperCase() ?? ''}${sub.slice(1)} Tester`,
          email: `${sub}@example.test`,
          email_verified: true,
        };
      },
    };
  },
  // --skip-consent: the first authorization of the client gets a grant of every scope without a consent page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (!args['skip-consent'] || !ctx.oidc.session.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(SCOPES.join(' '));
    await grant.save();
    return grant;
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 300,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 3600,
    Session: 3600,
  },
  clientBasedCORS: () => true,
  async renderError(ctx, out) {
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>oidc error</title></head><body><h1>oidc error</h1><pre>${
      Object.entries(out).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join('\n')}</pre></body></html>`;
  },
});

// The development pages @import a Google web font: tests run offline, so drop it (nothing else is external).
provider.use(async (ctx, next) => {
  await next();
  if (typeof ctx.body === 'string' && ctx.response.is('html')) {
    ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);?/g, '');
  }
});
provider.on('server_error', (_ctx, err) => console.error('oidc provider server_error:', err));

handler = provider.callback();
console.log(`oidc provider ready on ${issuer}`);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
