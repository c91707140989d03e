/**
 * Draws bench/results/latest.svg by hand (no chart library): two panels, throughput (MB/s) and server CPU
 * seconds per GB, each with one group of bars per scenario, replica count and condition (discarding consumer), one bar per
 * server at its median, with a min–max whisker. Pure: figures in, SVG text out.
 */
import type { Figure, FigureMetric } from './results.js';

const PANEL_WIDTH = 960;
const PANEL_HEIGHT = 300;
const MARGIN_LEFT = 70;
const MARGIN_TOP = 40;
const MARGIN_BOTTOM = 60;
const LEGEND_HEIGHT = 30;
/** Average advance of a 12 px sans-serif character, generous so that labels never touch. */
const LEGEND_CHAR_WIDTH_PX = 7;
const LEGEND_GAP_PX = 18;
const GROUP_GAP = 24;
/** Colour per server, stable across runs so charts can be compared by eye. */
const SERVER_COLOURS: Record<string, string> = {
  'walcast-ts': '#4e79a7',
  'walcast-native-sendfile': '#f28e2b',
  'walcast-native-writev': '#e15759',
  'walcast-native-uring': '#76b7b2',
  postgres: '#59a14f',
  ceiling: '#9c9c9c',
};
const FALLBACK_COLOUR = '#b07aa1';

function escapeXml(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

function niceMax(value: number): number {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

interface Group {
  readonly label: string;
  readonly figures: readonly Figure[];
}

function groupsOf(figures: readonly Figure[]): Group[] {
  const chartable = figures.filter((figure) => figure.consumer === 'wal-consumer' && figure.scenario !== 'live-latency');
  const keys = [...new Set(chartable.map((figure) => `${figure.scenario}|${figure.replicas}|${figure.condition}`))];
  return keys.map((key) => {
    const [scenario, replicas, condition] = key.split('|');
    return { label: `${scenario} ×${replicas}${condition === 'idle' ? '' : ` ${condition}`}`, figures: chartable.filter((figure) => `${figure.scenario}|${figure.replicas}|${figure.condition}` === key) };
  });
}

function panel(groups: readonly Group[], servers: readonly string[], metric: FigureMetric, title: string, top: number): string[] {
  const values = groups.flatMap((group) => group.figures.map((figure) => figure.metrics[metric]?.max ?? 0));
  const yMax = niceMax(Math.max(0, ...values));
  const plotWidth = PANEL_WIDTH - MARGIN_LEFT - 20;
  const plotHeight = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
  const groupWidth = groups.length === 0 ? plotWidth : plotWidth / groups.length;
  const barWidth = Math.max(4, (groupWidth - GROUP_GAP) / Math.max(1, servers.length));
  const y = (value: number): number => top + MARGIN_TOP + plotHeight - (value / yMax) * plotHeight;
  const parts = [`<text x="${MARGIN_LEFT}" y="${top + 24}" font-size="15" font-weight="bold">${escapeXml(title)}</text>`];
  for (let tick = 0; tick <= 4; tick++) {
    const value = (yMax * tick) / 4;
    parts.push(`<line x1="${MARGIN_LEFT}" x2="${MARGIN_LEFT + plotWidth}" y1="${y(value)}" y2="${y(value)}" stroke="#ddd"/>`);
    parts.push(`<text x="${MARGIN_LEFT - 6}" y="${y(value) + 4}" font-size="11" text-anchor="end">${Number(value.toPrecision(3))}</text>`);
  }
  groups.forEach((group, groupIndex) => {
    const groupLeft = MARGIN_LEFT + groupIndex * groupWidth + GROUP_GAP / 2;
    servers.forEach((server, serverIndex) => {
      const summary = group.figures.find((figure) => figure.server === server)?.metrics[metric];
      if (summary === undefined) return;
      const x = groupLeft + serverIndex * barWidth;
      const colour = SERVER_COLOURS[server] ?? FALLBACK_COLOUR;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(summary.median).toFixed(1)}" width="${(barWidth - 2).toFixed(1)}" height="${(y(0) - y(summary.median)).toFixed(1)}" fill="${colour}"><title>${escapeXml(`${server}: ${summary.median.toPrecision(4)} (min ${summary.min.toPrecision(4)}, max ${summary.max.toPrecision(4)})`)}</title></rect>`);
      const middle = x + (barWidth - 2) / 2;
      parts.push(`<line x1="${middle.toFixed(1)}" x2="${middle.toFixed(1)}" y1="${y(summary.min).toFixed(1)}" y2="${y(summary.max).toFixed(1)}" stroke="#222"/>`);
    });
    parts.push(`<text x="${(groupLeft + (groupWidth - GROUP_GAP) / 2).toFixed(1)}" y="${top + PANEL_HEIGHT - MARGIN_BOTTOM + 18}" font-size="12" text-anchor="middle">${escapeXml(group.label)}</text>`);
  });
  parts.push(`<line x1="${MARGIN_LEFT}" x2="${MARGIN_LEFT + plotWidth}" y1="${y(0)}" y2="${y(0)}" stroke="#222"/>`);
  return parts;
}

export function renderSvg(figures: readonly Figure[], caption: string): string {
  const groups = groupsOf(figures);
  const servers = [...new Set(groups.flatMap((group) => group.figures.map((figure) => figure.server)))];
  const height = 2 * PANEL_HEIGHT + LEGEND_HEIGHT + 30;
  // Each entry is as wide as its label (about 7 px a character at 12 px), so long names never overlap.
  let legendX = MARGIN_LEFT;
  const legend = servers.map((server) => {
    const x = legendX;
    legendX += 16 + server.length * LEGEND_CHAR_WIDTH_PX + LEGEND_GAP_PX;
    const colour = SERVER_COLOURS[server] ?? FALLBACK_COLOUR;
    return `<rect x="${x}" y="${2 * PANEL_HEIGHT + 8}" width="12" height="12" fill="${colour}"/><text x="${x + 16}" y="${2 * PANEL_HEIGHT + 18}" font-size="12">${escapeXml(server)}</text>`;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${PANEL_WIDTH}" height="${height}" viewBox="0 0 ${PANEL_WIDTH} ${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...panel(groups, servers, 'throughputMBps', 'Throughput, MB/s (higher is better; bar = median, line = min–max)', 0),
    ...panel(groups, servers, 'serverCpuSecondsPerGB', 'Server CPU seconds per GB sent (lower is better)', PANEL_HEIGHT),
    ...legend,
    `<text x="${MARGIN_LEFT}" y="${height - 8}" font-size="11" fill="#555">${escapeXml(caption)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}
