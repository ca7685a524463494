'use strict';
// The Node.js client retries what is safe to retry (docs/contracts.md, "Retrying calls"):
// against a running agentrt (AGENTRT_ENDPOINT, AGENTRT_API_KEY), through a real gRPC proxy
// started here that fails calls on the way: refused before they reach the gateway, or
// forwarded and their answer lost.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { describe, it, after } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { RuntimeClient } = require('../client');
const { rejection } = require('../testing/support');

const { AGENTRT_ENDPOINT: ENDPOINT, AGENTRT_API_KEY: API_KEY } = process.env;
const skip = ENDPOINT && API_KEY ? false : 'AGENTRT_ENDPOINT and AGENTRT_API_KEY are not set';

const RUNTIME = '/agentrt.gateway.v1.RuntimeService';
const METHODS = ['Execute', 'GetJob', 'ListJobs', 'CancelJob', 'ListActions', 'ResolveAction'];
const FAST = { attempts: 4, initialBackoffMs: 10, maxBackoffMs: 50 };
const asIs = (bytes) => bytes;
const lost = (code = grpc.status.UNAVAILABLE) => ({ code, reachesGateway: true });
const refused = (code) => ({ code, reachesGateway: false });

// Forwards every unary call of RuntimeService to the gateway; the i-th call of a method
// meets the i-th fault of plan[method] (none past its end). `calls` counts them.
async function startProxy(plan) {
  const upstream = new grpc.Client(ENDPOINT, grpc.credentials.createInsecure());
  const server = new grpc.Server();
  const calls = {};
  for (const method of METHODS) {
    const path = `${RUNTIME}/${method}`;
    server.register(path, (call, callback) => {
      const fault = (plan[method] || [])[calls[method] || 0];
      calls[method] = (calls[method] || 0) + 1;
      if (fault && !fault.reachesGateway) return callback({ code: fault.code, details: 'refused on the way' });
      const metadata = call.metadata.clone();
      upstream.makeUnaryRequest(path, asIs, asIs, call.request, metadata, {}, (error, answer) => {
        if (error) callback(error);
        else if (fault) callback({ code: fault.code, details: 'the answer was lost on the way' });
        else callback(null, answer);
      });
      return undefined;
    }, asIs, asIs, 'unary');
  }
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  return {
    endpoint: `127.0.0.1:${port}`,
    calls,
    stop: () => { server.forceShutdown(); upstream.close(); },
  };
}

describe('retries of the Node.js client', { skip, timeout: 60000 }, () => {
  const direct = skip ? null : new RuntimeClient(ENDPOINT, API_KEY);
  let proxy = null;
  let client = null;
  const through = async (plan, retry = FAST) => {
    proxy = await startProxy(plan);
    client = new RuntimeClient(proxy.endpoint, API_KEY, { retry });
    return client;
  };
  const session = () => `retries-${crypto.randomUUID()}`;
  after(() => direct && direct.close());
  const done = () => { if (client) client.close(); if (proxy) proxy.stop(); client = null; proxy = null; };

  it('executes once under one made-up request id when the answer is lost', async (t) => {
    t.after(done);
    const bucket = session();
    const job = await (await through({ Execute: [lost(), refused(grpc.status.CANCELLED)] }))
      .execute({ prompt: 'hello', model: 'local', session: bucket });
    assert.equal(proxy.calls.Execute, 3);
    const { jobs } = await direct.listJobs({ session: bucket });
    assert.deepEqual(jobs.map((listed) => listed.name), [job.name]);
  });

  it('retries a read cancelled on the way, and not with one attempt', async (t) => {
    t.after(done);
    const job = await direct.execute({ prompt: 'hello', model: 'local' });
    const cancelled = refused(grpc.status.CANCELLED);
    const retried = await through({ GetJob: [cancelled, cancelled] });
    assert.equal((await retried.getJob(job)).name, job.name);
    assert.equal(proxy.calls.GetJob, 3);
    done();
    const once = await through({ GetJob: [cancelled] }, { attempts: 1 });
    const error = await rejection(once.getJob(job));
    assert.equal(error.codeName, 'CANCELLED');
    assert.equal(proxy.calls.GetJob, 1);
  });

  it('retries a DEADLINE_EXCEEDED only while the call timeout leaves time', async (t) => {
    t.after(done);
    const job = await direct.execute({ prompt: 'hello', model: 'local' });
    const late = refused(grpc.status.DEADLINE_EXCEEDED);
    proxy = await startProxy({ GetJob: [late, late] });
    client = new RuntimeClient(proxy.endpoint, API_KEY, { retry: FAST, callTimeoutMs: 30000 });
    assert.equal((await client.getJob(job)).name, job.name);
    assert.equal(proxy.calls.GetJob, 3);
    client.close();
    // The pause before a retry (500 ms at least) would outlast the call's 300 ms.
    const slow = { attempts: 4, initialBackoffMs: 1000, maxBackoffMs: 1000 };
    client = new RuntimeClient(proxy.endpoint, API_KEY, { retry: slow, callTimeoutMs: 300 });
    proxy.calls.GetJob = 1; // the next call meets the second fault
    const error = await rejection(client.getJob(job));
    assert.equal(error.codeName, 'DEADLINE_EXCEEDED');
    assert.equal(proxy.calls.GetJob, 2);
  });

  it('returns the cancelled job when the answer of a cancel is lost', async (t) => {
    t.after(done);
    const job = await direct.execute({ prompt: 'tell me a long story', model: 'local-slow' });
    const cancelled = await (await through({ CancelJob: [lost()] })).cancel(job, 'enough');
    assert.equal(cancelled.state, 'JOB_STATE_CANCELLED');
    assert.equal(proxy.calls.CancelJob, 2);
    const again = await rejection(client.cancel(job));
    assert.equal(again.reason, 'ILLEGAL_TRANSITION');
  });
});
