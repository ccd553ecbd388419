// SPDX-License-Identifier: MIT
// Reference (issue 8): what users pick today. The official Node device SDK (azure-iot-device +
// azure-iot-device-mqtt, pinned in package-lock.json) sends the same 200-byte JSON messages
// (QoS 1, TLS, a message id each) to the same emulator, sequentially and with W sendEvent calls
// in flight, and reports rate, latency, its own CPU time per message and its RSS.
//
//   node bench.js CONNECTION_STRING CA_FILE SEQ_COUNT W10_COUNT W100_COUNT
// The connection string carries GatewayHostName=localhost:<port> (the SDK's way to a non-8883
// port); prints one JSON object on stdout.
'use strict';

const fs = require('fs');
const crypto = require('crypto');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const [connectionString, caFile, seqCount, w10Count, w100Count] = process.argv.slice(2);

function payload(seq) {
  // Same shape and size as bench_util.cpp's payload().
  const head =
    `{"deviceId":"bench","seq":${seq},"temperature":${(20 + (seq % 1000) / 100).toFixed(2)},` +
    `"humidity":${(40 + (seq % 200) / 10).toFixed(1)},"pressure":${(1000 + (seq % 300) / 10).toFixed(1)},` +
    `"status":"ok","pad":"`;
  return head + 'x'.repeat(200 - head.length - 2) + '"}';
}

function quantile(samples, q) {
  if (samples.length === 0) return 0;
  samples.sort((a, b) => a - b);
  return samples[Math.min(samples.length - 1, Math.round(q * (samples.length - 1)))];
}

async function run(client, count, window) {
  const latencies = [];
  let next = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  async function worker() {
    while (next < count) {
      const seq = next++;
      const message = new Message(payload(seq));
      message.messageId = crypto.randomUUID();
      const start = process.hrtime.bigint();
      await client.sendEvent(message);
      latencies.push(Number(process.hrtime.bigint() - start) / 1000);
    }
  }
  await Promise.all(Array.from({ length: window }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return {
    messages: count,
    window,
    seconds,
    rate: count / seconds,
    p50_us: quantile(latencies, 0.5),
    p99_us: quantile(latencies, 0.99),
    cpu_us_per_msg: (cpu.user + cpu.system) / count,
  };
}

async function main() {
  const client = Client.fromConnectionString(connectionString, Mqtt);
  client.setOptions({ ca: fs.readFileSync(caFile, 'utf8') });
  const opened = process.hrtime.bigint();
  await client.open();
  const connectMs = Number(process.hrtime.bigint() - opened) / 1e6;
  const rssIdle = process.memoryUsage().rss;
  // Flat keys (w1_rate, w10_p99_us, ...) so that the harness reads them without a JSON library.
  const result = { connect_ms: connectMs, rss_idle_kib: rssIdle / 1024 };
  let total = 0;
  for (const [count, window] of [[Number(seqCount), 1], [Number(w10Count), 10], [Number(w100Count), 100]]) {
    const r = await run(client, count, window);
    for (const [key, value] of Object.entries(r)) {
      result[`w${window}_${key}`] = value;
    }
    total += count;
  }
  result.messages = total;
  result.rss_after_kib = process.memoryUsage().rss / 1024;
  await client.close();
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
