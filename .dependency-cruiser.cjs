/**
 * The import rules `npm run lint` enforces (dependency-cruiser, which resolves every import, static, dynamic and
 * type-only, to a file, so a rule is about folders rather than how an import path happens to be spelled):
 *
 * 1. The layer order of docs/architecture.md ("Layers"): a module imports only its own layer and the layers below
 *    it. Modules of one row ("beside" each other) may import each other; cycles are refused everywhere.
 * 2. Style anchor 1, codecs are pure: nothing in src/wire or src/replication imports node:net, node:tls, node:fs or
 *    the native addon, except the one socket adapter per side named in CODEC_EXEMPT.
 * 3. Every folder and top-level file of src/ has a row in the table (a new capability gets a row before code), and
 *    production code never imports tests.
 *
 * Change LAYERS together with the table in docs/architecture.md.
 */
const { readdirSync } = require('node:fs');
const { join } = require('node:path');

/** Top to bottom. Each row is one layer; a name ending in `.ts` is a top-level file of src/, others are folders. */
const LAYERS = [
  ['cli', 'index.ts'],
  ['api'],
  ['server.ts'],
  ['ingest', 'admission'],
  ['replication'],
  ['retention'],
  ['timeline'],
  ['slots'],
  ['io', 'net'],
  ['storage', 'remote'],
  ['wire', 'config', 'tls', 'auth'],
  ['lsn.ts', 'errors.ts', 'log.ts', 'version.ts', 'failpoints.ts'],
];

/**
 * Files of src/wire and src/replication allowed to touch sockets or files. wire/connection.ts is the server's
 * socket adapter (PgConnection), wire/client.ts the replication client's.
 */
const CODEC_EXEMPT = ['src/wire/connection.ts', 'src/wire/client.ts'];

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The path regex of one table entry: a folder's files, or a top-level file and its colocated test. */
function entryPattern(name) {
  if (name.endsWith('.ts')) return `src/${escape(name.slice(0, -3))}(\\.test)?\\.ts$`;
  return `src/${escape(name)}/`;
}

function rowPattern(row) {
  return `^(${row.map(entryPattern).join('|')})`;
}

/** Fails loudly when src/ has an entry the table does not place, so no folder is left unchecked. */
function assertEveryEntryPlaced() {
  const placed = LAYERS.flat();
  const unplaced = readdirSync(join(__dirname, 'src'), { withFileTypes: true })
    .filter((entry) => entry.isDirectory() || (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') && !entry.name.endsWith('.d.ts')))
    .map((entry) => entry.name)
    .filter((name) => !placed.includes(name));
  if (unplaced.length > 0) {
    throw new Error(`src/ entries missing from the layer table in .dependency-cruiser.cjs and docs/architecture.md: ${unplaced.join(', ')}`);
  }
}

function layerRules() {
  return LAYERS.slice(1).map((row, index) => ({
    name: `layer-${row.join('-').replace(/\.ts/g, '')}`,
    comment: `${row.join(', ')} may import only layers below it (docs/architecture.md "Layers")`,
    severity: 'error',
    from: { path: rowPattern(row) },
    to: { path: LAYERS.slice(0, index + 1).map(rowPattern) },
  }));
}

assertEveryEntryPlaced();

module.exports = {
  forbidden: [
    ...layerRules(),
    {
      name: 'codec-no-sockets-or-files',
      comment: 'style anchor 1: codecs are pure; only the socket adapters in CODEC_EXEMPT touch node:net/tls/fs',
      severity: 'error',
      from: { path: '^src/(wire|replication)/', pathNot: [...CODEC_EXEMPT.map((file) => `^${escape(file)}$`), '\\.test\\.ts$'] },
      to: { dependencyTypes: ['core'], path: '^(node:)?(net|tls|fs|fs/promises)$' },
    },
    {
      name: 'codec-no-addon',
      comment: 'style anchor 1: wire and replication never load the native addon; only the io backend does',
      severity: 'error',
      from: { path: '^src/(wire|replication)/' },
      to: { path: ['^src/io/native-', '\\.node$', '^build/'] },
    },
    {
      name: 'no-circular',
      comment: 'modules beside each other may import each other, but never in a cycle',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'production-imports-no-tests',
      comment: 'tests may import fixtures and test/support; shipped code never imports a test',
      severity: 'error',
      from: { path: '^src/', pathNot: '\\.test\\.ts$' },
      to: { path: ['^test/', '\\.test\\.ts$'] },
    },
    {
      name: 'not-to-unresolvable',
      comment: 'an import that resolves to nothing is a typo or a missing dependency',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // Type-only imports count: a layer that needs another layer's types depends on it as much as on its code.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
