/** The upstream connection string parser: libpq quoting, defaults, and every refusal. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { formatConnInfo, parseConnInfo, tokenizeConnInfo, type UpstreamConnInfo } from './conninfo.js';

function parseOk(text: string): UpstreamConnInfo {
  const result = parseConnInfo(text, 'osuser');
  assert.ok(!isWalcastError(result), `expected ${text} to parse: ${String(result)}`);
  return result;
}

function parseError(text: string): string {
  const result = parseConnInfo(text, 'osuser');
  assert.ok(isWalcastError(result, 'WALCAST_ERR_CONFIG'), `expected ${text} to be refused`);
  return result.message;
}

test('parses host, port, user and application_name with defaults', () => {
  assert.deepEqual(parseOk('host=127.0.0.1 port=5433 user=repl'), {
    host: '127.0.0.1',
    port: 5433,
    hosts: [{ host: '127.0.0.1', port: 5433 }],
    targetSessionAttrs: 'any',
    user: 'repl',
    applicationName: 'walcast',
    connectTimeoutS: undefined,
    sslMode: 'prefer',
    sslRootCert: undefined,
    sslCert: undefined,
    sslKey: undefined,
    serverName: '127.0.0.1',
    options: undefined,
  });
  const defaults = parseOk('  host = db.example ');
  assert.equal(defaults.port, 5432);
  assert.equal(defaults.user, 'osuser');
  assert.equal(parseOk('host=h application_name=relay1 connect_timeout=5 sslmode=disable').applicationName, 'relay1');
});

test('quoted values keep spaces and escaped quotes and backslashes', () => {
  const pairs = tokenizeConnInfo(String.raw`host='a b' user='it\'s' application_name=x\ y dbname=''`);
  assert.ok(pairs instanceof Map);
  assert.equal(pairs.get('host'), 'a b');
  assert.equal(pairs.get('user'), "it's");
  assert.equal(pairs.get('application_name'), 'x y');
  assert.equal(pairs.get('dbname'), '');
});

test('hostaddr wins over host; ignorable libpq keywords are accepted', () => {
  assert.equal(parseOk('host=name hostaddr=10.0.0.1 dbname=replication keepalives=1').host, '10.0.0.1');
});

test('refuses passwords, unknown keywords, bad ports, TLS modes and malformed text', () => {
  assert.match(parseError('host=h password=secret'), /password= is not allowed/);
  assert.match(parseError('host=h passfile=/x'), /passfile/);
  assert.match(parseError('host=h colour=blue'), /unknown keyword "colour"/);
  assert.match(parseError('host=h port=99999'), /not a TCP port/);
  assert.match(parseError('host=h port=12ab'), /not a TCP port/);
  assert.match(parseError('host=h sslmode=on'), /sslmode=on is not one of/);
  assert.match(parseError('host=h sslmode=verify-full'), /needs sslrootcert/);
  assert.match(parseError('host=h sslmode=require sslcert=/c'), /go together/);
  assert.match(parseError('host=h user'), /missing "="/);
  assert.match(parseError("host='unterminated"), /unterminated/);
  assert.match(parseError('port=5432'), /host= is required/);
  assert.match(parseError('host=a,b,c port=1,2'), /could not match 2 port numbers to 3 hosts/);
  assert.match(parseError('host=a,,b'), /empty host/);
  assert.match(parseError('host=a target_session_attrs=primary-ish'), /target_session_attrs=primary-ish is invalid/);
  assert.match(parseError('host=/var/run/postgresql'), /unix-domain/);
  assert.match(parseError('host=h connect_timeout=-1'), /connect_timeout/);
  assert.match(parseError('host=h ' + 'x'.repeat(5000)), /longer than/);
});

test('TLS keywords keep libpq meanings: the verify-full name is host= even with hostaddr=', () => {
  const info = parseOk('host=db.example hostaddr=10.0.0.1 sslmode=verify-full sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key');
  assert.equal(info.host, '10.0.0.1');
  assert.equal(info.serverName, 'db.example');
  assert.equal(info.sslMode, 'verify-full');
  assert.equal(info.sslRootCert, '/ca.crt');
  assert.equal(parseOk('host=h sslmode=require').sslMode, 'require');
});

test('multiple hosts as libpq: one port for all or one per host, an empty port is the default', () => {
  const pair = parseOk('host=10.0.0.1,10.0.0.2 port=5432,5433 target_session_attrs=read-write');
  assert.deepEqual(pair.hosts, [{ host: '10.0.0.1', port: 5432 }, { host: '10.0.0.2', port: 5433 }]);
  assert.equal(pair.targetSessionAttrs, 'read-write');
  assert.equal(pair.host, '10.0.0.1');
  assert.deepEqual(parseOk('host=a,b port=6000').hosts, [{ host: 'a', port: 6000 }, { host: 'b', port: 6000 }]);
  assert.deepEqual(parseOk('host=a,b port=,7000').hosts, [{ host: 'a', port: 5432 }, { host: 'b', port: 7000 }]);
  assert.deepEqual(parseOk('host=a,b').hosts, [{ host: 'a', port: 5432 }, { host: 'b', port: 5432 }]);
});

test('formatConnInfo round-trips through the parser', () => {
  for (const text of ['host=db.example hostaddr=10.0.0.1 sslmode=verify-full sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key', 'host=127.0.0.1 port=5433 user=repl', "host='a b' user='it\\'s' application_name=r connect_timeout=3 sslmode=disable options='-c tenant_id=x'", 'host=a,b port=1,2 target_session_attrs=standby']) {
    const info = parseOk(text);
    assert.deepEqual(parseOk(formatConnInfo(info)), info);
  }
});
