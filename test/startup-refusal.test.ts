/**
 * Connections that are not physical replication connections are refused at startup with WALCAST_ERR_NOT_REPLICATION
 * (issue 15, item 5): PostgreSQL would start a normal SQL backend for a startup without `replication=` (or with
 * `replication=false`) and a logical walsender for `replication=database`; walcast has neither. Checked with a
 * real psql and with a raw client whose bytes are built and parsed here, independently of walcast's codecs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeTempDir, runPsql } from './support/postgres.js';
import { sendRawAndCollect, startupPacket } from './support/raw-client.js';
import { startWalcast, type RunningWalcast } from './support/walcast.js';

const NOT_REPLICATION_SQLSTATE = '0A000';

let walcast: RunningWalcast;

before(async () => {
  walcast = await startWalcast({ dataDir: await makeTempDir('walcast-startup-refusal') });
});

after(async () => {
  await walcast?.stop();
});

/** The fields of every ErrorResponse in a byte stream from the server (type 'E', Int32 length, code+text pairs). */
function errorResponses(received: Buffer): Map<string, string>[] {
  const found: Map<string, string>[] = [];
  for (let offset = 0; offset + 5 <= received.length; ) {
    const type = String.fromCharCode(received[offset]!);
    const length = received.readInt32BE(offset + 1);
    const body = received.subarray(offset + 5, offset + 1 + length);
    if (type === 'E') {
      const fields = new Map<string, string>();
      for (const field of body.toString('utf8').split('\0').filter((text) => text !== '')) fields.set(field[0]!, field.slice(1));
      found.push(fields);
    }
    offset += 1 + length;
  }
  return found;
}

describe('startup without a physical replication request', () => {
  for (const [name, parameters] of [
    ['no replication parameter', { user: 'repl', database: 'postgres' }],
    ['replication=false', { user: 'repl', database: 'postgres', replication: 'false' }],
    ['replication=database', { user: 'repl', database: 'postgres', replication: 'database' }],
  ] as const) {
    test(`a raw client with ${name} gets FATAL ${NOT_REPLICATION_SQLSTATE} and a closed connection`, async () => {
      const { received, closed } = await sendRawAndCollect(walcast.port, startupPacket(parameters), 10_000);
      assert.ok(closed, 'the server closes the connection');
      const errors = errorResponses(received);
      assert.equal(errors.length, 1, 'exactly one ErrorResponse');
      assert.equal(errors[0]?.get('S'), 'FATAL');
      assert.equal(errors[0]?.get('C'), NOT_REPLICATION_SQLSTATE);
      assert.match(errors[0]?.get('M') ?? '', /connect with replication=true/);
      assert.ok(!received.includes(Buffer.from('Z\0\0\0\x05I')), 'no ReadyForQuery: the session never started');
    });
  }

  test('psql without replication= is refused with the catalogue message, and with replication=true it connects', async () => {
    const plain = await runPsql(`host=127.0.0.1 port=${walcast.port} user=repl dbname=postgres`, 'SELECT 1');
    assert.equal(plain.code, 2, `psql exit code; stderr: ${plain.stderr}`);
    assert.match(plain.stderr, /FATAL: {2}walcast serves only physical replication connections: connect with replication=true/);
    const logical = await runPsql(`host=127.0.0.1 port=${walcast.port} user=repl dbname=postgres replication=database`, 'IDENTIFY_SYSTEM');
    assert.equal(logical.code, 2, `psql exit code; stderr: ${logical.stderr}`);
    assert.match(logical.stderr, /FATAL: {2}logical replication is not supported by walcast/);
    const physical = await runPsql(`host=127.0.0.1 port=${walcast.port} user=repl replication=true`, 'SHOW server_version');
    assert.equal(physical.code, 0, `a replication connection is still served; stderr: ${physical.stderr}`);
    assert.match(physical.stdout, /^15\./);
  });
});
