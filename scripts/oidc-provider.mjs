// A local OpenID provider for platform-auth's tests: oidc-provider (a certified
// implementation) with client credentials, introspection and one RSA signing key.
//
//   node oidc-provider.mjs <port> <kid>
//
// Clients: `svc` / `svc-secret-0123456789` gets tokens by client credentials;
// resource `urn:todo` gives JWT access tokens (RS256, typ at+jwt), `urn:opaque` opaque
// ones. `rs` / `rs-secret-0123456789` introspects. Restart with another kid to rotate
// the key. Prints `ready <issuer>` when it listens.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
const kid = process.argv[3] || 'k1';
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
const scopes = 'todos:read todos:write';

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [
    {
      client_id: 'svc',
      client_secret: 'svc-secret-0123456789',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: scopes,
    },
    {
      client_id: 'rs',
      client_secret: 'rs-secret-0123456789',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
    },
  ],
  scopes: scopes.split(' '),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: () => true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:todo',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: scopes,
        audience: resource,
        accessTokenTTL: 300,
        accessTokenFormat: resource === 'urn:opaque' ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
