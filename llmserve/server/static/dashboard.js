// The live page: polls /dashboard/data, turns successive snapshots of cumulative counters and
// histogram buckets into rates and percentiles (as Prometheus does), and draws them with uPlot.
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(250, Number(params.get("interval")) || 2000);
const WINDOW = 5;      // rates and percentiles span the last 5 polls
const KEEP = 300;      // points per chart
const COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"];
const CHARTS = [
  {id: "requests", title: "API requests per second", series: ["answered", "5xx", "shed (429)"]},
  {id: "tokens", title: "Tokens per second", series: ["prompt", "generated"]},
  {id: "latency", title: "Latency (s)", series: ["TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "E2E p99"]},
  {id: "queue", title: "Requests in the engine", series: ["running", "waiting"]},
  {id: "cache", title: "Caches and bandwidth (%)", series: ["KV cache used", "prefix-cache hits", "bandwidth utilisation"]},
  {id: "batching", title: "Batching (per engine step)", series: ["tokens", "sequences"]},
];

const snapshots = [];
const times = [];
const values = Object.fromEntries(CHARTS.map(c => [c.id, c.series.map(() => [])]));
const plots = {};
let polls = 0;

function makeCharts() {
  const grid = document.getElementById("charts");
  for (const chart of CHARTS) {
    const card = document.createElement("div");
    card.className = "card";
    card.innerHTML = `<h2>${chart.title}</h2>`;
    const box = document.createElement("figure");
    box.className = "chart";
    box.dataset.chart = chart.id;
    box.style.margin = "0";
    card.appendChild(box);
    grid.appendChild(card);
    const opts = {
      width: Math.max(380, box.clientWidth || card.clientWidth - 20), height: 200,
      series: [{}, ...chart.series.map((label, i) => ({label, stroke: COLORS[i % COLORS.length], width: 1.5,
                                                      spanGaps: true}))],
      axes: [{}, {size: 60}], legend: {live: false},
    };
    plots[chart.id] = new uPlot(opts, [[], ...chart.series.map(() => [])], box);
  }
}

// histogram_quantile over the bucket counts added between two snapshots.
function quantile(q, before, after) {
  const counts = after.counts.map((c, i) => c - (before.counts[i] || 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      if (after.le[i] === "+Inf") return i > 0 ? after.le[i - 1] : null;
      const lower = i === 0 ? 0 : after.le[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      return lower + (after.le[i] - lower) * (rank - below) / Math.max(counts[i] - below, 1e-9);
    }
  }
  return null;
}

function point(before, after) {
  const dt = Math.max(after.time - before.time, 1e-3);
  const delta = k => after.counters[k] - before.counters[k];
  const rate = k => delta(k) / dt;
  const q = (p, h) => quantile(p, before.histograms[h], after.histograms[h]);
  const steps = delta("steps"), queries = delta("prefix_cache_queries");
  const g = after.gauges;
  return {
    requests: [rate("api_requests"), rate("api_errors"), rate("shed")],
    tokens: [rate("prompt_tokens"), rate("generation_tokens")],
    latency: [q(0.5, "ttft"), q(0.99, "ttft"), q(0.5, "itl"), q(0.99, "itl"), q(0.99, "e2e")],
    queue: [g.running, g.waiting],
    cache: [100 * g.kv_cache_usage, queries > 0 ? 100 * delta("prefix_cache_hits") / queries : null,
            100 * g.bandwidth_utilization],
    batching: [steps > 0 ? delta("step_tokens") / steps : null, steps > 0 ? delta("step_sequences") / steps : null],
  };
}

function record(snapshot) {
  snapshots.push(snapshot);
  if (snapshots.length > WINDOW + 1) snapshots.shift();
  document.getElementById("model").textContent = snapshot.model;
  const status = document.getElementById("status");
  status.textContent = snapshot.gauges.engine_up ? "engine up" : "engine not serving";
  status.className = snapshot.gauges.engine_up ? "up" : "down";
  if (snapshots.length < 2) return;
  const row = point(snapshots[0], snapshot);
  times.push(snapshot.time);
  if (times.length > KEEP) times.shift();
  for (const chart of CHARTS) {
    row[chart.id].forEach((v, i) => {
      values[chart.id][i].push(v);
      if (values[chart.id][i].length > KEEP) values[chart.id][i].shift();
    });
    plots[chart.id].setData([times, ...values[chart.id]]);
  }
  // What a test (or a curious reader) can check without reading the canvas.
  document.getElementById("readout").textContent = JSON.stringify({polls, points: times.length, values});
}

async function poll() {
  try {
    const resp = await fetch("/dashboard/data", {cache: "no-store"});
    if (resp.ok) {
      polls += 1;
      record(await resp.json());
    }
  } catch (err) {
    document.getElementById("status").textContent = "server unreachable";
    document.getElementById("status").className = "down";
  }
  setTimeout(poll, INTERVAL_MS);
}

document.getElementById("interval").textContent = `${INTERVAL_MS / 1000} s`;
makeCharts();
poll();
