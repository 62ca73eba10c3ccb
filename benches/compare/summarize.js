#!/usr/bin/env node
// Prints the markdown table of one benches/compare/run.sh run.
//   node summarize.js OUT_DIR "workload ..." "server ..."
// OUT_DIR holds, per workload W and server S: W.S.meta (key=value lines written by run.sh),
// W.S.json (the bench's --json stdout) and W.S.err (its stderr). The bench's JSON is read
// defensively: each column is looked up under several plausible names; a value that is not
// found prints as "?", and the raw output of such rows is printed under the table.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const [dir, workloadList, serverList] = process.argv.slice(2);
const workloads = (workloadList || '').split(/\s+/).filter(Boolean);
const servers = (serverList || '').split(/\s+/).filter(Boolean);

function readMeta(file) {
  const meta = {};
  if (!fs.existsSync(file)) return null;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) meta[line.slice(0, i)] = line.slice(i + 1);
  }
  return meta;
}

// The last line of stdout that parses as a JSON object.
function readJson(file) {
  if (!fs.existsSync(file)) return { raw: '', obj: null };
  const raw = fs.readFileSync(file, 'utf8');
  try {
    return { raw, obj: JSON.parse(raw) };
  } catch {}
  const lines = raw.trim().split('\n').reverse();
  for (const l of lines) {
    try {
      const o = JSON.parse(l);
      if (o && typeof o === 'object') return { raw, obj: o };
    } catch {}
  }
  return { raw, obj: null };
}

// Flatten {a:{b:1}} into [["a.b", 1]] (numbers only).
function flatten(obj, prefix = '', out = []) {
  if (obj === null || typeof obj !== 'object') return out;
  for (const [k, v] of Object.entries(obj)) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (typeof v === 'number' && Number.isFinite(v)) out.push([p.toLowerCase(), v]);
    else if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, p, out);
  }
  return out;
}

// The first path matching one of the patterns (in order of preference), skipping `exclude`.
function find(flat, patterns, exclude = /$^/) {
  for (const re of patterns) {
    const hit = flat.find(([p]) => re.test(p) && !exclude.test(p));
    if (hit) return { path: hit[0], value: hit[1] };
  }
  return null;
}

// Scale by the unit a path's name carries, to the target unit ('s' | 'us' | 'ns').
const UNIT = { ns: 1e-9, us: 1e-6, ms: 1e-3, s: 1 };
function unitOf(p, dflt) {
  const m = /(?:^|[._])(ns|us|ms|s|sec|secs|seconds|nanos|micros|millis)(?:$|[._])/.exec(p);
  if (!m) return dflt;
  return { sec: 's', secs: 's', seconds: 's', nanos: 'ns', micros: 'us', millis: 'ms' }[m[1]] || m[1];
}
const conv = (hit, dflt, to) => (hit ? (hit.value * UNIT[unitOf(hit.path, dflt)]) / UNIT[to] : null);

const num = (x) => (x === undefined || x === null || x === '' || Number.isNaN(Number(x)) ? null : Number(x));
function fmtRate(x) {
  if (x === null) return '?';
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)} M/s`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)} k/s`;
  return `${x.toFixed(0)}/s`;
}
function fmtUs(x) {
  if (x === null) return '?';
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)} s`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(2)} ms`;
  return `${x.toFixed(0)} µs`;
}
const fmtNs = (x) => (x === null ? '?' : x >= 1e4 ? `${(x / 1e3).toFixed(1)} µs` : `${x.toFixed(0)} ns`);
// {user_s, system_s} (ringcast bench's CPU usage objects) -> total seconds.
const cpuSum = (o) =>
  o && typeof o === 'object' && typeof o.user_s === 'number' ? o.user_s + (Number(o.system_s) || 0) : null;
const fmtS = (x) => (x === null ? '?' : `${x.toFixed(2)} s`);

const header = [
  'workload',
  'server',
  'deliveries/s (msgs/s)',
  'server CPU / delivery',
  'p50',
  'p99',
  'loss',
  'server CPU',
  'load tool CPU',
  'idle RSS / conn',
];
const rows = [];
const raws = [];

for (const w of workloads) {
  for (const s of servers) {
    const meta = readMeta(path.join(dir, `${w}.${s}.meta`));
    if (!meta) continue;
    const cells = [w, s, '', '', '', '', '', '', '', ''];
    const { raw, obj } = readJson(path.join(dir, `${w}.${s}.json`));
    const missing = [];
    if (meta.status !== 'ok') {
      cells[2] = `**${meta.status}**${meta.note ? `: ${meta.note}` : ''}`;
      rows.push(cells);
      const err = fs.existsSync(path.join(dir, `${w}.${s}.err`))
        ? fs.readFileSync(path.join(dir, `${w}.${s}.err`), 'utf8').trim().split('\n').slice(-15).join('\n')
        : '';
      if (raw.trim() || err) raws.push(`### ${w} / ${s} (${meta.status})\n\n\`\`\`\n${raw.trim()}\n${err}\n\`\`\``);
      continue;
    }
    const flat = flatten(obj || {});
    const loadCpu = num(meta.load_cpu_s);
    cells[8] = fmtS(loadCpu);
    if (meta.kind === 'idle') {
      const connected = find(flat, [/^connected$/]);
      const rss0 = num(meta.rss0_kib);
      const rss1 = num(meta.rss1_kib);
      const conns = num(meta.conns_at_sample);
      cells[2] = connected ? `${connected.value} connected` : '?';
      const lat = find(flat, [/latency.*p50/]);
      const lat99 = find(flat, [/latency.*p99/]);
      cells[4] = lat ? `${fmtUs(conv(lat, 'us', 'us'))} (handshake)` : '?';
      cells[5] = lat99 ? fmtUs(conv(lat99, 'us', 'us')) : '?';
      const failed = find(flat, [/^failed\.total$/, /^failed$/]);
      cells[6] = failed ? `${failed.value} failed` : '?';
      cells[3] = '';
      cells[7] = fmtS(num(meta.server_cpu_s_proc));
      if (rss0 !== null && rss1 !== null && conns) {
        cells[9] = `${Math.round(((rss1 - rss0) * 1024) / conns)} B (${(rss0 / 1024).toFixed(1)} → ${(rss1 / 1024).toFixed(1)} MiB at ${conns})`;
      } else {
        cells[9] = '?';
        missing.push('rss');
      }
      if (!connected) missing.push('connected');
    } else {
      const rate = find(
        flat,
        meta.kind === 'echo'
          ? [
              /^(msgs|messages|echoes|round_?trips)_per_s(ec)?$/,
              /(msgs?|messages|echo(es)?|round_?trips)_per_s(ec)?$/,
              /per_s(ec)?$/,
            ]
          : [
              /^deliver(ies|ed)_per_s(ec)?$/,
              /deliver.*per_s(ec)?$/,
              /(receiv|msgs?|messages).*per_s(ec)?$/,
              /per_s(ec)?$/,
            ],
        /(handshake|connect|publish(ed)?_per|sent_per)/,
      );
      const count = find(
        flat,
        meta.kind === 'echo'
          ? [/^(messages|msgs|echoes|round_?trips|received)$/, /(messages|msgs|echoes|round_?trips|received)(_total)?$/]
          : [/^deliver(ies|ed)$/, /deliver(ies|ed)(_total)?$/, /^received$/, /receiv(ed)?(_total)?$/],
        /(per_s|expected|lost|loss|missing|bytes)/,
      );
      cells[2] = rate ? fmtRate(rate.value) : '?';
      if (!rate) missing.push('rate');
      // Server CPU: the bench's own (measured with --server-pid over its window), else the
      // whole run from /proc/PID/stat (marked *: includes connecting the subscribers).
      const perDelivery = find(flat, [
        /^server_ns_per_(delivery|msg|message)$/,
        /server.*per_(delivery|message|msg|echo)/,
        /cpu_ns_per_(delivery|message|msg)/,
      ]);
      const serverCpu = find(flat, [/server.*cpu(_time)?(_(ns|us|ms|s))?$/, /server.*cpu.*total/], /per_/);
      let cpuS = cpuSum(obj && obj.server_cpu);
      if (cpuS === null && serverCpu) cpuS = conv(serverCpu, 's', 's');
      let star = '';
      if (cpuS === null && num(meta.server_cpu_s_proc) !== null) {
        cpuS = num(meta.server_cpu_s_proc);
        star = '*';
      }
      cells[7] = cpuS === null ? '?' : `${fmtS(cpuS)}${star}`;
      if (perDelivery) cells[3] = fmtNs(conv(perDelivery, 'ns', 'ns'));
      else if (cpuS !== null && count && count.value > 0) cells[3] = `${fmtNs((cpuS * 1e9) / count.value)}${star}`;
      else {
        cells[3] = '?';
        missing.push('server cpu/delivery');
      }
      const p50 = find(flat, [/latency.*p50/, /p50/]);
      const p99 = find(flat, [/latency.*p99$/, /latency.*p99/, /p99$/], /p999/);
      cells[4] = p50 ? fmtUs(conv(p50, 'us', 'us')) : '?';
      cells[5] = p99 ? fmtUs(conv(p99, 'us', 'us')) : '?';
      if (!p50 || !p99) missing.push('latency');
      const loss = find(
        flat,
        meta.kind === 'echo'
          ? [/^unanswered$/, /^loss(_pct|_percent|_ratio)?$/, /^lost$/, /loss|lost|missing|unanswered/]
          : [/^loss(_pct|_percent|_ratio)?$/, /^lost$/, /loss|lost|missing/],
      );
      if (loss) {
        const pct = /pct|percent/.test(loss.path);
        const ratio = /ratio/.test(loss.path);
        const expected = obj && (meta.kind === 'echo' ? obj.sent : obj.expected);
        cells[6] = pct ? `${loss.value}%` : ratio ? `${(loss.value * 100).toFixed(3)}%` : `${loss.value}`;
        if (!pct && !ratio && typeof expected === 'number' && expected > 0) {
          cells[6] += ` of ${expected}`;
        }
      } else {
        cells[6] = '?';
        missing.push('loss');
      }
      const clientCpu = find(flat, [/(client|bench|load|self).*cpu(_time)?(_(ns|us|ms|s))?$/], /per_|server/);
      const clientS = cpuSum(obj && obj.client_cpu);
      if (clientS !== null) cells[8] = fmtS(clientS);
      else if (clientCpu) cells[8] = fmtS(conv(clientCpu, 's', 's'));
      if (cells[8] !== '?' && obj && typeof obj.client_cores === 'number') cells[8] += ` (${obj.client_cores.toFixed(2)} cores)`;
      // Anything that makes the row suspect goes next to the rate.
      const warn = [];
      if (obj && obj.drain_timed_out) warn.push('drain timed out');
      if (obj && obj.publisher_error) warn.push(`publisher: ${obj.publisher_error}`);
      if (obj && obj.subscribe_failed) warn.push(`${obj.subscribe_failed} subscribes failed`);
      if (obj && obj.connect_failed) warn.push(`${obj.connect_failed} connects failed`);
      if (obj && obj.mismatched) warn.push(`${obj.mismatched} mismatched`);
      if (obj && obj.publish_rejected && Object.keys(obj.publish_rejected).length) {
        warn.push(`publish rejected ${JSON.stringify(obj.publish_rejected)}`);
      }
      if (warn.length) cells[2] += ` (${warn.join('; ')})`;
    }
    if (!obj) missing.push('no JSON');
    rows.push(cells);
    if (missing.length) {
      raws.push(`### ${w} / ${s} (missing: ${missing.join(', ')})\n\n\`\`\`\n${raw.trim()}\n\`\`\``);
    }
  }
}

// A column no row fills (idle RSS when no idle workload ran) is left out.
const keep = header.map((_, i) => i < 2 || rows.some((r) => r[i] !== ''));
const line = (c) => `| ${c.filter((_, i) => keep[i]).join(' | ')} |`;
console.log(line(header));
console.log(line(header.map(() => '---')));
for (const r of rows) console.log(line(r));
if (raws.length) {
  console.log('\nRaw output of rows with a failure or a field not found:\n');
  console.log(raws.join('\n\n'));
}
