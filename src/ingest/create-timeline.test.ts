/**
 * timeline create against a scripted upstream: what it asks, what it lays out, how it treats slots (created,
 * reused, refused, dropped again when the layout fails), and the settings it parses.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { silentLogger } from '../log.js';
import { readControlFile } from '../storage/control-file.js';
import type { ServerNotice } from '../wire/backend-parser.js';
import { ServerError, type QueryResult } from '../wire/client.js';
import { createFollowingTimeline, parseSegmentSizeSetting, parseServerVersion } from './create-timeline.js';
import type { UpstreamClient } from './follower.js';

const TENANT = '11'.repeat(16);
const TIMELINE = '22'.repeat(16);
let dataDir = '';

beforeEach(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'walcast-create-'));
});
afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

function fakeUpstream(slotAnswer: 'ok' | '42710' | '0A000', pgTimelineId = 3): { connect: () => Promise<UpstreamClient>; queries: string[] } {
  const queries: string[] = [];
  const result = (columns: string[], row: (string | null)[], tag: string): QueryResult => ({ columns, rows: [row], tag });
  const client: UpstreamClient = {
    parameters: new Map([['server_version', '15.18 (Debian 15.18-1.pgdg120+1)']]),
    query: async (sql) => {
      queries.push(sql);
      if (sql === 'IDENTIFY_SYSTEM') return result(['systemid', 'timeline', 'xlogpos', 'dbname'], ['7311234567890123456', String(pgTimelineId), '1/2345678', null], 'IDENTIFY_SYSTEM');
      if (sql === 'SHOW wal_segment_size') return result(['wal_segment_size'], ['16MB'], 'SHOW');
      const history = /^TIMELINE_HISTORY (\d+)$/.exec(sql);
      if (history !== null) return result(['filename', 'content'], [`0000000${history[1]}.history`, `history of ${history[1]}\n`], 'TIMELINE_HISTORY');
      if (sql.startsWith('CREATE_REPLICATION_SLOT')) {
        if (slotAnswer !== 'ok') throw new ServerError(notice(slotAnswer));
        return result(['slot_name'], ['x'], 'CREATE_REPLICATION_SLOT');
      }
      if (sql.startsWith('DROP_REPLICATION_SLOT')) return { columns: [], rows: [], tag: 'DROP_REPLICATION_SLOT' };
      throw new Error(`unexpected ${sql}`);
    },
    startReplication: async () => assert.fail('create does not stream'),
    end: async () => undefined,
  };
  return { connect: async () => client, queries };
}

function notice(sqlState: string): ServerNotice {
  return { severity: 'ERROR', sqlState, message: `refused with ${sqlState}`, detail: undefined, hint: undefined, fields: new Map() };
}

test('lays out the control file, every history file and a slot; starts at the current segment', async () => {
  const upstream = fakeUpstream('ok');
  const result = await createFollowingTimeline({ dataDir, upstream: 'host=db port=5433 user=repl', password: undefined, tenantId: TENANT, timelineId: TIMELINE, log: silentLogger(), connect: upstream.connect });
  assert.equal(result.startLsn, 0x1_0200_0000n);
  assert.equal(result.slotName, 'walcast_2222222222222222');
  assert.deepEqual(upstream.queries, ['IDENTIFY_SYSTEM', 'SHOW wal_segment_size', 'TIMELINE_HISTORY 2', 'TIMELINE_HISTORY 3', 'CREATE_REPLICATION_SLOT "walcast_2222222222222222" PHYSICAL RESERVE_WAL']);
  const dir = join(dataDir, TENANT, TIMELINE);
  assert.equal(readFileSync(join(dir, '00000003.history'), 'utf8'), 'history of 3\n');
  const control = await readControlFile(dir);
  assert.equal(control.pgTimelineId, 3);
  assert.equal(control.pgVersion, 150018);
  assert.equal(control.flushLsn, 0x1_0200_0000n);
  assert.equal(control.upstream, 'host=db port=5433 user=repl application_name=walcast');
  await assert.rejects(
    createFollowingTimeline({ dataDir, upstream: 'host=db', password: undefined, tenantId: TENANT, timelineId: TIMELINE, log: silentLogger(), connect: upstream.connect }),
    (error: { code?: string }) => error.code === 'WALCAST_ERR_TIMELINE_EXISTS',
  );
});

test('an existing slot is reused, a slotless upstream is followed without one', async () => {
  const reused = await createFollowingTimeline({ dataDir, upstream: 'host=db', password: undefined, log: silentLogger(), connect: fakeUpstream('42710').connect });
  assert.equal(reused.slotName, 'walcast_' + reused.timelineId.slice(0, 16));
  const slotless = await createFollowingTimeline({ dataDir, upstream: 'host=db', password: undefined, log: silentLogger(), connect: fakeUpstream('0A000', 1).connect });
  assert.equal(slotless.slotName, undefined);
  assert.deepEqual(slotless.historyFiles, []);
});

test('a start ahead of the upstream is refused before any slot exists; a failed layout drops the new slot', async () => {
  const ahead = fakeUpstream('ok');
  await assert.rejects(
    createFollowingTimeline({ dataDir, upstream: 'host=db', password: undefined, startLsn: 0x2_0000_0000n, log: silentLogger(), connect: ahead.connect }),
    (error: { code?: string }) => error.code === 'WALCAST_ERR_CONFIG',
  );
  assert.ok(!ahead.queries.some((query) => query.startsWith('CREATE_REPLICATION_SLOT')));
  const blocked = join(dataDir, 'not-a-dir');
  writeFileSync(blocked, '');
  const failing = fakeUpstream('ok');
  await assert.rejects(createFollowingTimeline({ dataDir: blocked, upstream: 'host=db', password: undefined, log: silentLogger(), connect: failing.connect }));
  const createdSlot = /"(walcast_[0-9a-f]{16})"/.exec(failing.queries.at(-2) ?? '')?.[1];
  assert.ok(createdSlot !== undefined, 'the slot was created first');
  assert.equal(failing.queries.at(-1), `DROP_REPLICATION_SLOT "${createdSlot}"`);
  assert.ok(!existsSync(join(blocked, TENANT)));
});

test('parses wal_segment_size and server_version', () => {
  assert.equal(parseSegmentSizeSetting('16MB'), 16 * 1024 * 1024);
  assert.equal(parseSegmentSizeSetting('1GB'), 1024 * 1024 * 1024);
  assert.equal(parseSegmentSizeSetting('1024kB'), 1024 * 1024);
  assert.throws(() => parseSegmentSizeSetting('3MB'), (error: { code?: string }) => error.code === 'WALCAST_ERR_SEGMENT_SIZE');
  assert.throws(() => parseSegmentSizeSetting(null), (error: { code?: string }) => error.code === 'WALCAST_ERR_SEGMENT_SIZE');
  assert.equal(parseServerVersion('15.18 (walcast 0.1.0)'), 150018);
  assert.equal(parseServerVersion(undefined), 150000);
  assert.throws(() => parseServerVersion('16.2'), (error: { code?: string }) => error.code === 'WALCAST_ERR_UPSTREAM');
});
