#!/usr/bin/env -S node --no-memory-reducer
/**
 * The `walcast` command line: flag parsing and help for every subcommand, and nothing else. Each subcommand's
 * work lives in its own module. Flag names are a public contract (scripts and outside tools use them).
 * A wrong flag prints one line and exits 2; an operating error prints one line and exits 1.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { AUTHENTICATION_TIMEOUT_MS_MAX } from '../admission/admission-options.js';
import { AUTHENTICATION_TIMEOUT_MS_DEFAULT, STARTUP_CONNECTIONS_DEFAULT, STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT } from '../admission/admission.js';
import { CONNECTIONS_MAX, STARTUP_CONNECTIONS_MAX } from '../config/limits.js';
import { isWalcastError } from '../errors.js';
import { LOG_LEVELS } from '../log.js';
import { WALCAST_VERSION } from '../version.js';

const EXIT_USAGE = 2;
const EXIT_FAILURE = 1;

function buildProgram(): Command {
  const program = new Command('walcast')
    .description('PostgreSQL WAL streaming server: serves physical replication (START_REPLICATION) from stored WAL')
    .version(WALCAST_VERSION)
    .showSuggestionAfterError(true)
    .exitOverride();

  program
    .command('serve')
    .description('serve every timeline in the data directory over the PostgreSQL replication protocol')
    .option('--data-dir <dir>', 'data directory holding <tenant_id>/<timeline_id>/ timelines', './walcast-data')
    .option('--listen <host:port>', 'PostgreSQL protocol listen address', '127.0.0.1:5454')
    .addOption(new Option('--auth <method>', 'client authentication; trust is allowed only on loopback').choices(['trust', 'scram-sha-256', 'cert', 'jwt']).default('trust'))
    .option('--password-file <file>', 'file holding the replication password (else env WALCAST_PASSWORD)')
    .option('--tls-cert <file>', 'PEM server certificate (chain): answer SSLRequest with TLS; reloaded on SIGHUP')
    .option('--tls-key <file>', 'PEM private key of --tls-cert; reloaded on SIGHUP')
    .option('--tls-ca <file>', 'PEM CA bundle client certificates must chain to (asks clients for a certificate; needed by --auth cert)')
    .addOption(new Option('--tls-mode <mode>', 'prefer: plain and TLS clients; require: plain clients are refused with 28000').choices(['prefer', 'require']).default('prefer'))
    .option('--allow-plaintext', 'allow password or token auth without TLS on a non-loopback address (logs a warning)')
    .option('--jwt-public-key <file>', 'Ed25519 public key(s), PEM or JWK/JWKS, for --auth jwt and the HTTP API; repeatable; reloaded on SIGHUP', collect, [])
    .option('--upstream-password-file <file>', 'file holding the password for upstreams that timelines follow (else env WALCAST_UPSTREAM_PASSWORD)')
    .addOption(new Option('--io <backend>', 'I/O backend (env WALCAST_IO; the flag wins)').choices(['auto', 'native', 'ts']))
    .addOption(new Option('--native-strategy <strategy>', 'socket strategy of the native backend (env WALCAST_NATIVE_STRATEGY)').choices(['sendfile', 'writev', 'uring']))
    .option('--tcp-congestion-loopback <names>', 'TCP congestion control of connections from loopback addresses: names tried in order, or "system" (default cubic,reno: no pacing, which costs loopback senders ~2x CPU under BBR)')
    .option('--tcp-congestion <names>', 'TCP congestion control of connections from other addresses: names tried in order, or "system" (the default)')
    .option('--max-connections <n>', `authenticated connections served at once, 1 to ${CONNECTIONS_MAX}; more are refused with 53300`, parseIntUpTo(CONNECTIONS_MAX), 4096)
    .option('--max-startup-connections <n>', `connections still starting up or authenticating, a pool of their own (default ${STARTUP_CONNECTIONS_DEFAULT}, at most ${STARTUP_CONNECTIONS_MAX}); when full the oldest idle one is closed`, parseIntUpTo(STARTUP_CONNECTIONS_MAX))
    .option('--max-startup-connections-per-address <n>', `of those, from one client address (default ${STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT})`, parseIntUpTo(STARTUP_CONNECTIONS_MAX))
    .option('--authentication-timeout <ms>', `startup and authentication must finish within this (PostgreSQL authentication_timeout; default ${AUTHENTICATION_TIMEOUT_MS_DEFAULT})`, parseIntUpTo(AUTHENTICATION_TIMEOUT_MS_MAX))
    .option('--replica-timeout <ms>', 'end a stream whose replica sent nothing for this long (PostgreSQL wal_sender_timeout)', parsePositiveInt, 60_000)
    .option('--wal-keep-size <size>', 'WAL kept behind the end for replicas without a slot, as PostgreSQL wal_keep_size (64MB, 1GB; a plain number is MB)', '1GB')
    .option('--max-slot-wal-keep-size <size>', 'a slot further behind than this is invalidated and its WAL removed, as PostgreSQL max_slot_wal_keep_size (-1: unlimited)', '-1')
    .option('--remote-storage <s3://bucket/prefix>', 'offload completed WAL segments to this S3 bucket and prefix and read removed WAL back from it (credentials: the AWS SDK chain, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws)')
    .option('--remote-storage-endpoint <url>', 'S3-compatible endpoint, e.g. http://127.0.0.1:9000 (path-style addressing)')
    .option('--remote-storage-region <region>', 'S3 region (default: AWS_REGION, else us-east-1)')
    .option('--http <host:port>', 'HTTP status/metrics listen address', '127.0.0.1:7676')
    .option('--no-http', 'do not serve the HTTP status API')
    .option('--http-auth-token-file <file>', 'bearer token file; required when --http is not loopback (unless --auth jwt)')
    .option('--http-tls', 'serve the HTTP API over HTTPS with --tls-cert/--tls-key')
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS as string[]).default('info'))
    .action(async (options: Record<string, unknown>) => {
      const { runServe } = await import('./serve-command.js');
      await runServe(options);
    });

  program
    .command('import')
    .description('validate a pg_wal or WAL archive directory and create (or extend) a timeline from it')
    .requiredOption('--from <dir>', 'PostgreSQL pg_wal directory or WAL archive directory')
    .option('--data-dir <dir>', 'walcast data directory', './walcast-data')
    .option('--tenant-id <id>', 'tenant id (32 hex); a new one when omitted')
    .option('--timeline-id <id>', 'timeline id (32 hex); a new one when omitted')
    .option('--json', 'print the result as JSON')
    .action(async (options: Record<string, unknown>) => {
      const { runImport } = await import('./import-command.js');
      await runImport(options);
    });

  program
    .command('status')
    .description("show a running server's timelines and replicas with their lag (from its HTTP API)")
    .option('--http <url>', 'the server HTTP API: URL or HOST:PORT', 'http://127.0.0.1:7676')
    .option('--http-auth-token-file <file>', 'bearer token file (else env WALCAST_HTTP_AUTH_TOKEN)')
    .option('--json', 'print one JSON document instead of a table')
    .action(async (options: Record<string, unknown>) => {
      const { runStatus } = await import('./status-command.js');
      await runStatus(options);
    });

  const slot = program.command('slot').description("manage a timeline's replication slots (through the running server's HTTP API, or on the files when none runs)");
  const slotOptions = (command: Command): Command =>
    command
      .option('--data-dir <dir>', 'walcast data directory', './walcast-data')
      .option('--tenant-id <id>', 'tenant id (32 hex); needed when the data directory holds several timelines')
      .option('--timeline-id <id>', 'timeline id (32 hex); needed when the data directory holds several timelines')
      .option('--http <url>', "the server's HTTP API (default: the address the running server recorded in the data directory)")
      .option('--http-auth-token-file <file>', 'bearer token file (else env WALCAST_HTTP_AUTH_TOKEN)')
      .option('--json', 'print JSON');
  slotOptions(slot.command('list').description('list the slots: name, active, restart LSN, bytes retained, wal_status')).action(async (options: Record<string, unknown>) => {
    const { runSlot } = await import('./slot-command.js');
    await runSlot('list', undefined, options);
  });
  slotOptions(slot.command('create').description('create a persistent physical slot').argument('<name>', 'slot name: [a-z0-9_], at most 63 bytes'))
    .option('--reserve-wal', 'hold WAL from the current commit LSN at once (as RESERVE_WAL), not from the first feedback')
    .action(async (name: string, options: Record<string, unknown>) => {
      const { runSlot } = await import('./slot-command.js');
      await runSlot('create', name, options);
    });
  slotOptions(slot.command('drop').description('drop a slot (refused while a connection has it)').argument('<name>', 'slot name')).action(async (name: string, options: Record<string, unknown>) => {
    const { runSlot } = await import('./slot-command.js');
    await runSlot('drop', name, options);
  });

  const token = program.command('token').description('authentication tokens (Ed25519 JWTs, Neon claims) for --auth jwt and the HTTP API');
  token
    .command('create')
    .description('print a signed token on stdout')
    .requiredOption('--private-key <file>', 'Ed25519 private key (PEM), e.g. from `openssl genpkey -algorithm ed25519`')
    .addOption(new Option('--scope <scope>', 'tenant: one tenant\'s timelines; safekeeperdata: everything').choices(['tenant', 'safekeeperdata']).makeOptionMandatory())
    .option('--tenant-id <id>', 'tenant id (32 hex) for --scope tenant')
    .option('--ttl <duration>', 'lifetime: seconds, or 90s, 30m, 24h, 7d', '24h')
    .action(async (options: Record<string, unknown>) => {
      const { runTokenCreate } = await import('./token-command.js');
      await runTokenCreate(options);
    });

  const timeline = program.command('timeline').description('manage timelines');
  timeline
    .command('create')
    .description('create a timeline that follows an upstream server (PostgreSQL or walcast) over physical replication')
    .requiredOption('--upstream <conninfo>', "libpq-style connection string, e.g. 'host=10.0.0.5 port=5432 user=repl' (no password)")
    .option('--upstream-password-file <file>', 'file holding the upstream password (else env WALCAST_UPSTREAM_PASSWORD)')
    .option('--data-dir <dir>', 'walcast data directory', './walcast-data')
    .option('--tenant-id <id>', 'tenant id (32 hex); a new one when omitted')
    .option('--timeline-id <id>', 'timeline id (32 hex); a new one when omitted')
    .option('--start-lsn <X/Y>', "where to start (rounded down to a segment start); default: the start of the upstream's current segment")
    .option('--json', 'print the result as JSON')
    .addOption(new Option('--log-level <level>', 'log level (logs go to stderr)').choices(LOG_LEVELS as string[]).default('warn'))
    .action(async (options: Record<string, unknown>) => {
      const { runTimelineCreate } = await import('./timeline-command.js');
      await runTimelineCreate(options);
    });
  timeline
    .command('remove')
    .description('remove a timeline and its WAL; while serve runs, its streams end with FATAL 57P04 (no restart needed)')
    .requiredOption('--tenant-id <id>', 'tenant id (32 hex)')
    .requiredOption('--timeline-id <id>', 'timeline id (32 hex)')
    .option('--data-dir <dir>', 'walcast data directory', './walcast-data')
    .option('--wait-seconds <n>', 'wait at most this long for the removal to finish (0: only record the request, which serve acts on)', parseNonNegativeInt, 60)
    .option('--http <url>', "the server's HTTP API (default: the address the running server recorded in the data directory)")
    .option('--http-auth-token-file <file>', 'admin bearer token file (else env WALCAST_HTTP_AUTH_TOKEN)')
    .option('--json', 'print the result as JSON')
    .action(async (options: Record<string, unknown>) => {
      const { runTimelineRemove } = await import('./timeline-remove-command.js');
      await runTimelineRemove(options);
    });
  timeline
    .command('restore')
    .description('bring a timeline up from object storage on a new machine (then: walcast serve --remote-storage …)')
    .requiredOption('--remote-storage <s3://bucket/prefix>', 'where the timeline was offloaded (credentials: the AWS SDK chain)')
    .option('--remote-storage-endpoint <url>', 'S3-compatible endpoint (path-style addressing)')
    .option('--remote-storage-region <region>', 'S3 region (default: AWS_REGION, else us-east-1)')
    .requiredOption('--tenant-id <id>', 'tenant id (32 hex)')
    .requiredOption('--timeline-id <id>', 'timeline id (32 hex)')
    .option('--data-dir <dir>', 'walcast data directory', './walcast-data')
    .option('--json', 'print the result as JSON')
    .action(async (options: Record<string, unknown>) => {
      const { runTimelineRestore } = await import('./timeline-command.js');
      await runTimelineRestore(options);
    });

  return program;
}

/** A flag parser for an integer from 1 to `max`: an out-of-range setting is a usage error naming the range. */
function parseIntUpTo(max: number): (text: string) => number {
  return (text) => {
    const value = parsePositiveInt(text);
    if (value > max) throw new InvalidArgumentError(`expected an integer from 1 to ${max}, got "${text}"`);
    return value;
  };
}

/** Commander accumulator for a repeatable flag (--jwt-public-key A --jwt-public-key B). */
function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function parseNonNegativeInt(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`expected an integer of 0 or more, got "${text}"`);
  return value;
}

function parsePositiveInt(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) throw new InvalidArgumentError(`expected a positive integer, got "${text}"`);
  return value;
}

async function main(argv: readonly string[]): Promise<void> {
  const program = buildProgram();
  // Commander prints its own message to stderr; we only fix the exit code.
  program.configureOutput({ writeErr: (text) => process.stderr.write(text.split('\n')[0] + '\n') });
  for (const command of program.commands) command.exitOverride().configureOutput({ writeErr: (text) => process.stderr.write(text.split('\n')[0] + '\n') });
  try {
    await program.parseAsync(argv as string[]);
  } catch (error) {
    if (error instanceof CommanderError) {
      const helpOrVersion = error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help';
      process.exitCode = helpOrVersion ? 0 : EXIT_USAGE;
      return;
    }
    if (error instanceof RangeError || error instanceof TypeError) {
      process.stderr.write(`walcast: ${error.message}\n`);
      process.exitCode = error instanceof RangeError ? EXIT_USAGE : EXIT_FAILURE;
      return;
    }
    const prefix = isWalcastError(error) ? `walcast: ${error.code}: ` : 'walcast: ';
    process.stderr.write(prefix + (error instanceof Error ? error.message : String(error)) + '\n');
    process.exitCode = EXIT_FAILURE;
  }
}

await main(process.argv);
