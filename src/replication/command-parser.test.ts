/** Replication command parsing: PostgreSQL's and Neon's forms, and what is SQL or a syntax error. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseReplicationCommand } from './command-parser.js';

test('simple commands, with or without a trailing semicolon and in any case', () => {
  assert.deepEqual(parseReplicationCommand('IDENTIFY_SYSTEM'), { kind: 'identify_system' });
  assert.deepEqual(parseReplicationCommand('identify_system;'), { kind: 'identify_system' });
  assert.deepEqual(parseReplicationCommand('  TIMELINE_STATUS  '), { kind: 'timeline_status' });
  assert.deepEqual(parseReplicationCommand('SHOW wal_segment_size'), { kind: 'show', name: 'wal_segment_size' });
  assert.deepEqual(parseReplicationCommand('SHOW "Data_Directory_Mode"'), { kind: 'show', name: 'Data_Directory_Mode' });
  assert.deepEqual(parseReplicationCommand('SHOW neon.tenant_id'), { kind: 'show', name: 'neon.tenant_id' });
  assert.deepEqual(parseReplicationCommand('READ_REPLICATION_SLOT "Slot1"'), { kind: 'read_replication_slot', slotName: 'Slot1' });
  assert.deepEqual(parseReplicationCommand('READ_REPLICATION_SLOT Slot1'), { kind: 'read_replication_slot', slotName: 'slot1' });
  assert.deepEqual(parseReplicationCommand('TIMELINE_HISTORY 2'), { kind: 'timeline_history', pgTimelineId: 2 });
  assert.deepEqual(parseReplicationCommand(''), { kind: 'empty' });
  assert.deepEqual(parseReplicationCommand(' ; '), { kind: 'empty' });
  assert.deepEqual(parseReplicationCommand("SET datestyle TO 'ISO'"), { kind: 'set' });
});

test('START_REPLICATION as pg_receivewal, the walreceiver and Neon send it', () => {
  assert.deepEqual(parseReplicationCommand('START_REPLICATION 0/3000000 TIMELINE 1'), {
    kind: 'start_replication',
    slotName: undefined,
    startLsn: 0x3000000n,
    pgTimelineId: 1,
    term: undefined,
  });
  assert.deepEqual(parseReplicationCommand('START_REPLICATION SLOT "pg_walreceiver_123" PHYSICAL 16/B374D848 TIMELINE 3'), {
    kind: 'start_replication',
    slotName: 'pg_walreceiver_123',
    startLsn: 0x16_b374_d848n,
    pgTimelineId: 3,
    term: undefined,
  });
  assert.deepEqual(parseReplicationCommand("START_REPLICATION PHYSICAL 0/0 (term='42')"), {
    kind: 'start_replication',
    slotName: undefined,
    startLsn: 0n,
    pgTimelineId: undefined,
    term: 42n,
  });
});

test('SQL and unsupported replication commands are told apart from syntax errors', () => {
  assert.equal(parseReplicationCommand('SELECT 1').kind, 'sql');
  assert.equal(parseReplicationCommand('select pg_current_wal_lsn()').kind, 'sql');
  assert.equal(parseReplicationCommand('(1)').kind, 'sql');
  assert.deepEqual(parseReplicationCommand('BASE_BACKUP'), { kind: 'unsupported', command: 'BASE_BACKUP' });
  assert.deepEqual(parseReplicationCommand('START_REPLICATION SLOT s LOGICAL 0/0'), { kind: 'unsupported', command: 'START_REPLICATION LOGICAL' });
  assert.equal(parseReplicationCommand('CREATE_REPLICATION_SLOT "s" PHYSICAL').kind, 'create_replication_slot');
  assert.equal(parseReplicationCommand('DROP_REPLICATION_SLOT "s"').kind, 'drop_replication_slot');
});

test('malformed commands are syntax errors with a message', () => {
  for (const text of [
    'START_REPLICATION',
    'START_REPLICATION PHYSICAL nonsense',
    'START_REPLICATION 0/1 TIMELINE',
    'START_REPLICATION 0/1 TIMELINE 0',
    'START_REPLICATION 0/1 TIMELINE 99999999999',
    'START_REPLICATION 0/1 extra',
    "START_REPLICATION 0/1 (term='x')",
    'START_REPLICATION 1FFFFFFFF/0',
    'IDENTIFY_SYSTEM now',
    'TIMELINE_HISTORY',
    'TIMELINE_HISTORY 0',
    'SHOW',
    'SHOW "unterminated',
    'READ_REPLICATION_SLOT',
    'x'.repeat(9000),
  ]) {
    const command = parseReplicationCommand(text);
    assert.equal(command.kind, 'invalid', text.slice(0, 40));
    assert.ok(command.kind === 'invalid' && command.message.length > 0);
  }
});
