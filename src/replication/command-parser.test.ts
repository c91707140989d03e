/** Replication command parsing: PostgreSQL's and Neon's forms, and what is SQL or a syntax error. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseBoolean, parseReplicationCommand } from './command-parser.js';

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

test('CREATE_REPLICATION_SLOT: keyword and option-list forms, TEMPORARY, quoted names, LOGICAL recognised', () => {
  const physical = (slotName: string, temporary: boolean, reserveWal: boolean) => ({ kind: 'create_replication_slot', slotName, temporary, slotKind: 'physical', reserveWal });
  assert.deepEqual(parseReplicationCommand('CREATE_REPLICATION_SLOT s PHYSICAL'), physical('s', false, false));
  assert.deepEqual(parseReplicationCommand('create_replication_slot S physical reserve_wal;'), physical('s', false, true));
  assert.deepEqual(parseReplicationCommand('CREATE_REPLICATION_SLOT "pg_walreceiver_42" TEMPORARY PHYSICAL (RESERVE_WAL)'), physical('pg_walreceiver_42', true, true));
  assert.deepEqual(parseReplicationCommand("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 'off')"), physical('s', false, false));
  assert.deepEqual(parseReplicationCommand('CREATE_REPLICATION_SLOT s PHYSICAL (reserve_wal tr)'), physical('s', false, true));
  assert.deepEqual(parseReplicationCommand('CREATE_REPLICATION_SLOT "Bad-Name" PHYSICAL'), physical('Bad-Name', false, false));
  // repl_scanner.l truncates identifiers to NAMEDATALEN - 1 bytes.
  assert.deepEqual(parseReplicationCommand(`CREATE_REPLICATION_SLOT ${'x'.repeat(70)} PHYSICAL`), physical('x'.repeat(63), false, false));
  assert.deepEqual(parseReplicationCommand('CREATE_REPLICATION_SLOT l LOGICAL test_decoding'), { kind: 'create_replication_slot', slotName: 'l', temporary: false, slotKind: 'logical', reserveWal: false });
});

test('CREATE_REPLICATION_SLOT: the errors PostgreSQL 15 gives for bad options', () => {
  const cases: Array<[string, string]> = [
    ['CREATE_REPLICATION_SLOT s', 'syntax error at end of input'],
    ['CREATE_REPLICATION_SLOT s TEMPORARY', 'syntax error at end of input'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL ()', 'syntax error at or near ")"'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL maybe)', 'reserve_wal requires a Boolean value'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL, RESERVE_WAL)', 'conflicting or redundant options'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL EXPORT_SNAPSHOT', 'conflicting or redundant options'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL TWO_PHASE', 'conflicting or redundant options'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL (FOO)', 'unrecognized option: foo'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL', 'syntax error at end of input'],
    ['CREATE_REPLICATION_SLOT s PHYSICAL nonsense', 'syntax error at or near "nonsense"'],
    ['CREATE_REPLICATION_SLOT s LOGICAL', 'syntax error at end of input'],
    ['DROP_REPLICATION_SLOT s NOWAIT', 'syntax error at or near "NOWAIT"'],
    ['DROP_REPLICATION_SLOT', 'syntax error at end of input'],
  ];
  for (const [text, message] of cases) assert.deepEqual(parseReplicationCommand(text), { kind: 'invalid', message }, text);
});

test('DROP_REPLICATION_SLOT name [WAIT]', () => {
  assert.deepEqual(parseReplicationCommand('DROP_REPLICATION_SLOT s'), { kind: 'drop_replication_slot', slotName: 's', wait: false });
  assert.deepEqual(parseReplicationCommand('DROP_REPLICATION_SLOT "s" WAIT'), { kind: 'drop_replication_slot', slotName: 's', wait: true });
});

test('parseBoolean follows parse_bool', () => {
  for (const text of ['true', 'T', 'yes', 'y', 'on', '1', 'TRU']) assert.equal(parseBoolean(text), true, text);
  for (const text of ['false', 'f', 'no', 'n', 'off', 'of', '0']) assert.equal(parseBoolean(text), false, text);
  for (const text of ['', 'o', 'maybe', '2']) assert.equal(parseBoolean(text), undefined, text);
});
