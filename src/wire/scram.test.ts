/**
 * SCRAM-SHA-256 tests: the server against the RFC 7677 §3 example exchange, the client against a proof
 * computed independently here with node:crypto, and every malformed-message path.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import { describe, test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { ScramClientExchange, ScramServerExchange, createScramVerifier, parseSaslInitialResponse, saslPrep } from './scram.js';

// RFC 7677 §3: user "user", password "pencil".
const RFC = {
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal: 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

function rfcServer(password = 'pencil'): ScramServerExchange {
  return new ScramServerExchange(createScramVerifier(password, RFC.salt, 4096), RFC.serverNonce);
}

const isViolation = (error: unknown): boolean => isWalcastError(error, 'WALCAST_ERR_PROTOCOL_VIOLATION');

describe('SCRAM-SHA-256 server', () => {
  test('reproduces the RFC 7677 example exchange', () => {
    const server = rfcServer();
    assert.equal(server.serverFirst(RFC.clientFirst), RFC.serverFirst);
    assert.equal(server.verifyClientFinal(RFC.clientFinal), RFC.serverFinal);
  });

  test('a wrong password yields no server-final message', () => {
    const server = rfcServer('not pencil');
    server.serverFirst(RFC.clientFirst);
    assert.equal(server.verifyClientFinal(RFC.clientFinal), undefined);
  });

  test('the verifier stores keys, not the password', () => {
    const verifier = createScramVerifier('pencil');
    assert.equal(verifier.salt.length, 16);
    assert.equal(verifier.iterations, 4096);
    assert.deepEqual(Object.keys(verifier).sort(), ['iterations', 'salt', 'serverKey', 'storedKey']);
  });

  test('malformed or mismatched messages are protocol violations', () => {
    assert.throws(() => rfcServer().serverFirst('p=tls-server-end-point,,n=,r=abc'), isViolation);
    assert.throws(() => rfcServer().serverFirst('n,,r=abc'), isViolation);
    assert.throws(() => rfcServer().serverFirst('n,,m=ext,n=,r=abc'), isViolation);
    assert.throws(() => rfcServer().serverFirst('n,,n=,r=a,b'), isViolation);
    const finals = [
      RFC.clientFinal.replace('c=biws', 'c=eSws'), // channel binding flag differs from client-first
      RFC.clientFinal.replace('r=rOpr', 'r=XOpr'), // nonce differs
      RFC.clientFinal.replace(/,p=.*$/, ''), // no proof
      RFC.clientFinal.replace(/p=.*$/, 'p=AAAA'), // proof too short
    ];
    for (const final of finals) {
      const server = rfcServer();
      server.serverFirst(RFC.clientFirst);
      assert.throws(() => server.verifyClientFinal(final), isViolation, final);
    }
  });

  test('SASLInitialResponse decoding', () => {
    const data = Buffer.from('n,,n=,r=x');
    const length = Buffer.alloc(4);
    length.writeInt32BE(data.length);
    assert.deepEqual(parseSaslInitialResponse(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), length, data])), { mechanism: 'SCRAM-SHA-256', data: 'n,,n=,r=x' });
    assert.throws(() => parseSaslInitialResponse(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), length])), isViolation);
    length.writeInt32BE(-1);
    assert.throws(() => parseSaslInitialResponse(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), length])), isViolation);
  });
});

describe('SCRAM-SHA-256 client', () => {
  test('computes the proof libpq would, and checks the server signature', () => {
    const clientNonce = 'fyko+d2lbbFgONRv9qkxdawL';
    const client = new ScramClientExchange('s3cret', clientNonce);
    assert.equal(client.clientFirst(), `n,,n=,r=${clientNonce}`);
    const salt = Buffer.from('0123456789abcdef');
    const serverFirst = `r=${clientNonce}SERVER,s=${salt.toString('base64')},i=4096`;
    const clientFinal = client.clientFinal(serverFirst);

    // Independent computation (RFC 5802 §3).
    const salted = pbkdf2Sync('s3cret', salt, 4096, 32, 'sha256');
    const clientKey = createHmac('sha256', salted).update('Client Key').digest();
    const storedKey = createHash('sha256').update(clientKey).digest();
    const withoutProof = `c=biws,r=${clientNonce}SERVER`;
    const authMessage = `n=,r=${clientNonce},${serverFirst},${withoutProof}`;
    const signature = createHmac('sha256', storedKey).update(authMessage).digest();
    const proof = Buffer.from(clientKey.map((byte, index) => byte ^ signature[index]!));
    assert.equal(clientFinal, `${withoutProof},p=${proof.toString('base64')}`);

    const serverKey = createHmac('sha256', salted).update('Server Key').digest();
    const serverSignature = createHmac('sha256', serverKey).update(authMessage).digest('base64');
    client.verifyServerFinal(`v=${serverSignature}`);
    assert.throws(() => client.verifyServerFinal(`v=${Buffer.alloc(32).toString('base64')}`), isViolation);
    assert.throws(() => client.verifyServerFinal('e=invalid-proof'), isViolation);
  });

  test('refuses a server nonce that does not extend its own, and absurd iteration counts', () => {
    assert.throws(() => new ScramClientExchange('pw', 'abc').clientFinal('r=xyz,s=AAAA,i=4096'), isViolation);
    assert.throws(() => new ScramClientExchange('pw', 'abc').clientFinal('r=abc,s=AAAA,i=4096'), isViolation);
    assert.throws(() => new ScramClientExchange('pw', 'abc').clientFinal('r=abcd,s=AAAA,i=0'), isViolation);
    assert.throws(() => new ScramClientExchange('pw', 'abc').clientFinal('r=abcd,s=AAAA,i=99999999999'), isViolation);
  });

  test('client and server agree, and disagree on a wrong password', () => {
    const verifier = createScramVerifier('correct horse');
    for (const [password, ok] of [['correct horse', true], ['wrong', false]] as const) {
      const client = new ScramClientExchange(password);
      const server = new ScramServerExchange(verifier);
      const final = server.verifyClientFinal(client.clientFinal(server.serverFirst(client.clientFirst())));
      assert.equal(final !== undefined, ok);
      if (final !== undefined) client.verifyServerFinal(final);
    }
  });
});

describe('saslPrep', () => {
  test('ASCII is unchanged; non-ASCII is mapped and NFKC-normalised as PostgreSQL does', () => {
    assert.equal(saslPrep('plain ASCII \t'), 'plain ASCII \t');
    assert.equal(saslPrep('I\u00ADX'), 'IX'); // soft hyphen maps to nothing (RFC 4013 §3 example)
    assert.equal(saslPrep('\u2168'), 'IX'); // ROMAN NUMERAL NINE normalises to "IX"
    assert.equal(saslPrep('a\u00A0b'), 'a b'); // non-ASCII space maps to SPACE
    assert.equal(saslPrep('\u00AA'), 'a'); // FEMININE ORDINAL INDICATOR (RFC 4013 example)
    assert.equal(saslPrep('\u00E9\u0007'), '\u00E9\u0007'); // prohibited: the raw password is used
    // The same password typed as composed and decomposed é authenticates alike.
    const verifier = createScramVerifier('caf\u00E9');
    assert.deepEqual(createScramVerifier('cafe\u0301', verifier.salt).storedKey, verifier.storedKey);
  });
});

describe('SCRAM-SHA-256-PLUS (tls-server-end-point channel binding)', () => {
  const endPoint = createHash('sha256').update('a server certificate').digest();
  const password = 'pencil';
  const verifier = createScramVerifier(password, RFC.salt, 4096);
  const bindHeader = 'p=tls-server-end-point,,';

  /** A client-final computed here, independently of ScramClientExchange, binding `binding` after the GS2 header. */
  function clientFinalFor(serverFirst: string, gs2Header: string, binding: Buffer): string {
    const clientFirstBare = 'n=,r=clientnonce';
    const channel = Buffer.concat([Buffer.from(gs2Header), binding]).toString('base64');
    const nonce = /r=([^,]+)/.exec(serverFirst)![1]!;
    const withoutProof = `c=${channel},r=${nonce}`;
    const salted = pbkdf2Sync(password, RFC.salt, 4096, 32, 'sha256');
    const clientKey = createHmac('sha256', salted).update('Client Key').digest();
    const signature = createHmac('sha256', createHash('sha256').update(clientKey).digest()).update(`${clientFirstBare},${serverFirst},${withoutProof}`).digest();
    const proof = Buffer.from(clientKey.map((byte, index) => byte ^ signature[index]!));
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  test('a client bound to this certificate authenticates', () => {
    const server = new ScramServerExchange(verifier, 'servernonce', { plusSelected: true, endPoint });
    const serverFirst = server.serverFirst(`${bindHeader}n=,r=clientnonce`);
    assert.match(server.verifyClientFinal(clientFinalFor(serverFirst, bindHeader, endPoint)) ?? '', /^v=/);
  });

  test('binding data of another certificate (a man in the middle) is refused', () => {
    const server = new ScramServerExchange(verifier, 'servernonce', { plusSelected: true, endPoint });
    const serverFirst = server.serverFirst(`${bindHeader}n=,r=clientnonce`);
    const other = createHash('sha256').update('the attacker certificate').digest();
    assert.throws(() => server.verifyClientFinal(clientFinalFor(serverFirst, bindHeader, other)), /channel binding does not match/);
  });

  test('negotiation errors: PLUS without binding, binding without PLUS, a downgrade "y", an unknown type', () => {
    assert.throws(() => new ScramServerExchange(verifier, 'n1', { plusSelected: true, endPoint }).serverFirst('n,,n=,r=c'), /did not use channel binding/);
    assert.throws(() => new ScramServerExchange(verifier, 'n1', { plusSelected: false, endPoint }).serverFirst(`${bindHeader}n=,r=c`), /SCRAM-SHA-256-PLUS was not selected/);
    assert.throws(() => new ScramServerExchange(verifier, 'n1', { plusSelected: false, endPoint }).serverFirst('y,,n=,r=c'), /negotiation error/);
    assert.throws(() => new ScramServerExchange(verifier, 'n1', { plusSelected: true, endPoint }).serverFirst('p=tls-unique,,n=,r=c'), /unsupported SCRAM channel-binding type/);
    // Without TLS, "y" is fine: the client could bind, the server cannot.
    assert.match(new ScramServerExchange(verifier, 'n1').serverFirst('y,,n=,r=c'), /^r=cn1/);
  });
});
