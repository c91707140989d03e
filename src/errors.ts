/**
 * The error catalogue: every error walcast raises on purpose has a stable `WALCAST_ERR_*` code here, with the
 * SQLSTATE sent to a PostgreSQL client when the error ends a command or a stream.
 *
 * Codes are never reused or renumbered: scripts and monitoring match on them. docs/errors.md documents each
 * one, and a test keeps that page and this table in step. Programmer errors are `assert` failures, not codes.
 */

/** SQLSTATEs used by walcast (PostgreSQL src/backend/utils/errcodes.txt). */
export const SqlState = {
  successfulCompletion: '00000',
  protocolViolation: '08P01',
  featureNotSupported: '0A000',
  invalidParameterValue: '22023',
  invalidAuthorizationSpecification: '28000',
  invalidPassword: '28P01',
  syntaxError: '42601',
  undefinedObject: '42704',
  duplicateObject: '42710',
  objectNotInPrerequisiteState: '55000',
  objectInUse: '55006',
  invalidName: '42602',
  nameTooLong: '42622',
  configurationLimitExceeded: '53400',
  undefinedFile: '58P01',
  tooManyConnections: '53300',
  programLimitExceeded: '54000',
  adminShutdown: '57P01',
  databaseDropped: '57P04',
  cannotConnectNow: '57P03',
  queryCanceled: '57014',
  internalError: 'XX000',
  dataCorrupted: 'XX001',
} as const;
export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];

interface CatalogueEntry {
  readonly sqlState: SqlStateCode;
  readonly summary: string;
}

/** The catalogue. Append only. */
export const ERROR_CATALOGUE = {
  // Wire protocol and connection.
  WALCAST_ERR_PROTOCOL_VIOLATION: { sqlState: SqlState.protocolViolation, summary: 'a client message was malformed' },
  WALCAST_ERR_MESSAGE_TOO_LARGE: { sqlState: SqlState.protocolViolation, summary: 'a client message exceeded the size limit' },
  WALCAST_ERR_UNSUPPORTED_PROTOCOL: { sqlState: SqlState.featureNotSupported, summary: 'unsupported frontend protocol version' },
  WALCAST_ERR_INVALID_STARTUP_PARAMETER: { sqlState: SqlState.invalidParameterValue, summary: 'a startup parameter has an invalid value' },
  WALCAST_ERR_AUTH_FAILED: { sqlState: SqlState.invalidPassword, summary: 'password authentication failed' },
  WALCAST_ERR_AUTH_METHOD: { sqlState: SqlState.invalidAuthorizationSpecification, summary: 'the client does not support the required authentication method' },
  WALCAST_ERR_TOO_MANY_CONNECTIONS: { sqlState: SqlState.tooManyConnections, summary: 'the connection limit is reached' },
  WALCAST_ERR_STARTUP_TIMEOUT: { sqlState: SqlState.protocolViolation, summary: 'the client did not finish startup in time' },
  WALCAST_ERR_IDLE_TIMEOUT: { sqlState: SqlState.protocolViolation, summary: 'the client sent nothing for too long' },
  WALCAST_ERR_SHUTDOWN: { sqlState: SqlState.adminShutdown, summary: 'the server is shutting down' },
  // Commands.
  WALCAST_ERR_SYNTAX: { sqlState: SqlState.syntaxError, summary: 'a replication command could not be parsed' },
  WALCAST_ERR_SQL_NOT_SUPPORTED: { sqlState: SqlState.featureNotSupported, summary: 'SQL is not supported on a physical replication connection' },
  WALCAST_ERR_UNKNOWN_SETTING: { sqlState: SqlState.undefinedObject, summary: 'SHOW names an unknown setting' },
  WALCAST_ERR_NO_TIMELINE: { sqlState: SqlState.undefinedObject, summary: 'no timeline was selected or the selected timeline does not exist' },
  WALCAST_ERR_INVALID_TIMELINE: { sqlState: SqlState.invalidParameterValue, summary: 'the requested PostgreSQL timeline is not served' },
  WALCAST_ERR_NOT_REPLICATION: { sqlState: SqlState.featureNotSupported, summary: 'the connection is not a physical replication connection' },
  // Streaming.
  WALCAST_ERR_WAL_REMOVED: { sqlState: SqlState.undefinedFile, summary: 'the requested WAL segment is not held' },
  WALCAST_ERR_START_AHEAD: { sqlState: SqlState.internalError, summary: 'the requested start is ahead of the WAL flush position' },
  WALCAST_ERR_STREAM_IO: { sqlState: SqlState.internalError, summary: 'sending WAL to the replica failed' },
  WALCAST_ERR_FEEDBACK_MALFORMED: { sqlState: SqlState.protocolViolation, summary: 'replica feedback was malformed' },
  WALCAST_ERR_REPLICA_TIMEOUT: { sqlState: SqlState.protocolViolation, summary: 'the replica sent no feedback for too long' },
  WALCAST_ERR_COPY_FAILED: { sqlState: SqlState.queryCanceled, summary: 'the replica ended the stream with CopyFail' },
  // Storage.
  WALCAST_ERR_WAL_INVALID: { sqlState: SqlState.dataCorrupted, summary: 'WAL failed validation' },
  WALCAST_ERR_WAL_GAP: { sqlState: SqlState.dataCorrupted, summary: 'WAL segments are not contiguous' },
  WALCAST_ERR_SEGMENT_SIZE: { sqlState: SqlState.invalidParameterValue, summary: 'the WAL segment size is wrong or unsupported' },
  WALCAST_ERR_SYSTEM_ID_MISMATCH: { sqlState: SqlState.objectNotInPrerequisiteState, summary: 'WAL from different PostgreSQL systems was mixed' },
  WALCAST_ERR_CONTROL_FILE: { sqlState: SqlState.dataCorrupted, summary: 'the timeline control file is missing or corrupt' },
  WALCAST_ERR_TIMELINE_EXISTS: { sqlState: SqlState.duplicateObject, summary: 'the timeline already exists' },
  WALCAST_ERR_NOTHING_TO_IMPORT: { sqlState: SqlState.undefinedFile, summary: 'the import directory holds no WAL segments' },
  WALCAST_ERR_SEGMENT_TRUNCATED: { sqlState: SqlState.dataCorrupted, summary: 'a stored WAL segment file is shorter than the WAL it must hold' },
  // Configuration and native I/O.
  WALCAST_ERR_CONFIG: { sqlState: SqlState.invalidParameterValue, summary: 'the configuration is invalid' },
  WALCAST_ERR_NATIVE_UNAVAILABLE: { sqlState: SqlState.featureNotSupported, summary: 'the native I/O addon could not be loaded' },
  WALCAST_ERR_NATIVE_IO: { sqlState: SqlState.internalError, summary: 'a native I/O call failed' },
  // Ingest.
  WALCAST_ERR_UPSTREAM: { sqlState: SqlState.internalError, summary: 'the upstream server failed or refused' },
  WALCAST_ERR_UPSTREAM_TIMELINE_SWITCH: { sqlState: SqlState.objectNotInPrerequisiteState, summary: 'the upstream is on an older PostgreSQL timeline than walcast' },
  WALCAST_ERR_UPSTREAM_DIVERGED: { sqlState: SqlState.objectNotInPrerequisiteState, summary: "the upstream's timeline history does not contain walcast's position" },
  WALCAST_ERR_WAL_WRITE: { sqlState: SqlState.internalError, summary: 'writing or syncing received WAL failed' },
  // Replication slots.
  WALCAST_ERR_SLOT_NAME_INVALID: { sqlState: SqlState.invalidName, summary: 'a replication slot name is empty or has a character outside [a-z0-9_]' },
  WALCAST_ERR_SLOT_NAME_TOO_LONG: { sqlState: SqlState.nameTooLong, summary: 'a replication slot name is longer than 63 bytes' },
  WALCAST_ERR_SLOT_EXISTS: { sqlState: SqlState.duplicateObject, summary: 'the replication slot already exists' },
  WALCAST_ERR_SLOT_UNKNOWN: { sqlState: SqlState.undefinedObject, summary: 'the replication slot does not exist' },
  WALCAST_ERR_SLOT_ACTIVE: { sqlState: SqlState.objectInUse, summary: 'the replication slot is in use by another connection' },
  WALCAST_ERR_SLOT_LIMIT: { sqlState: SqlState.configurationLimitExceeded, summary: 'the timeline holds as many replication slots as allowed' },
  WALCAST_ERR_SLOT_LOGICAL: { sqlState: SqlState.featureNotSupported, summary: 'logical replication slots are not supported' },
  WALCAST_ERR_SLOT_FILE: { sqlState: SqlState.dataCorrupted, summary: 'the timeline slot file is unreadable or corrupt' },
  // Integrity.
  WALCAST_ERR_WAL_CORRUPTED: { sqlState: SqlState.dataCorrupted, summary: 'stored WAL failed its page checksum; the page is refused until it verifies again' },
  // Connection admission (appended: codes are never renumbered).
  WALCAST_ERR_SHUTTING_DOWN: { sqlState: SqlState.cannotConnectNow, summary: 'a new connection arrived while the server is shutting down' },
  // TLS and tokens.
  WALCAST_ERR_TLS_REQUIRED: { sqlState: SqlState.invalidAuthorizationSpecification, summary: 'a plain connection reached a server that requires TLS' },
  WALCAST_ERR_CERT_AUTH: { sqlState: SqlState.invalidAuthorizationSpecification, summary: 'client certificate authentication failed' },
  WALCAST_ERR_TOKEN_INVALID: { sqlState: SqlState.invalidAuthorizationSpecification, summary: 'a token failed verification' },
  WALCAST_ERR_TOKEN_SCOPE: { sqlState: SqlState.invalidAuthorizationSpecification, summary: 'a valid token does not grant access to the tenant asked for' },
  // Remote object storage (offload).
  WALCAST_ERR_REMOTE_STORAGE: { sqlState: SqlState.internalError, summary: 'an object storage request failed' },
  WALCAST_ERR_REMOTE_METADATA: { sqlState: SqlState.dataCorrupted, summary: 'the remote timeline metadata object is missing or invalid' },
  // Timeline removal while serving.
  WALCAST_ERR_TIMELINE_REMOVED: { sqlState: SqlState.databaseDropped, summary: 'the timeline was removed (or is being removed) while the connection used it' },
} as const satisfies Record<string, CatalogueEntry>;

export type WalcastErrorCode = keyof typeof ERROR_CATALOGUE;

/** An operating error with a stable code. `message` is the human text sent to clients as ErrorResponse M. */
export class WalcastError extends Error {
  readonly code: WalcastErrorCode;
  readonly sqlState: SqlStateCode;
  /** Optional ErrorResponse D field. */
  readonly detail: string | undefined;
  /** Optional ErrorResponse H field. */
  readonly hint: string | undefined;

  constructor(code: WalcastErrorCode, message: string, options?: { cause?: unknown; detail?: string; hint?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WalcastError';
    this.code = code;
    this.sqlState = ERROR_CATALOGUE[code].sqlState;
    this.detail = options?.detail;
    this.hint = options?.hint;
  }
}

export function isWalcastError(error: unknown, code?: WalcastErrorCode): error is WalcastError {
  return error instanceof WalcastError && (code === undefined || error.code === code);
}
