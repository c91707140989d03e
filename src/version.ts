/**
 * walcast's version and the PostgreSQL server_version it reports. Clients check server_version:
 * pg_receivewal accepts 9.3 up to 15.x and enables READ_REPLICATION_SLOT from 15 (pg_receivewal.c), so walcast
 * presents itself as PostgreSQL 15, the version whose WAL format it serves.
 */
export const WALCAST_VERSION = '0.1.0';
export const PG_SERVER_VERSION = `15.18 (walcast ${WALCAST_VERSION})`;
/** server_version_num-style value for the version above. */
export const PG_SERVER_VERSION_NUM = 150018;
