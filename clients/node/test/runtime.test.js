'use strict';
// Contract tests of the Node.js client against a running agentrt: AGENTRT_ENDPOINT and
// AGENTRT_API_KEY name the gateway and a tenant's key; AGENTRT_TEST_APPROVAL_POLICY a policy
// set that requires approval of the calculator tool; AGENTRT_TEST_CONTROL_DIR a folder where
// the test asks for a gateway restart (tests/clients/test_node_client.py provides them all).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { describe, it, after } = require('node:test');
const grpc = require('@grpc/grpc-js');
const { AgentrtError, RuntimeClient, eventPosition, fromStruct } = require('../client');
const { rejection } = require('../testing/support');

const { AGENTRT_ENDPOINT: ENDPOINT, AGENTRT_API_KEY: API_KEY } = process.env;
const skip = ENDPOINT && API_KEY ? false : 'AGENTRT_ENDPOINT and AGENTRT_API_KEY are not set';

const isHistory = (event) => event.id.split('.').length === 2;

async function collect(events) {
  const all = [];
  for await (const event of events) all.push(event);
  return all;
}

describe('RuntimeService from Node.js', { skip, timeout: 60000 }, () => {
  const client = skip ? null : new RuntimeClient(ENDPOINT, API_KEY);
  after(() => client && client.close());

  it('executes a job, streams its events and returns its result', async () => {
    const job = await client.execute({ prompt: 'Say hello to Node', model: 'local' });
    assert.match(job.name, /^jobs\/[0-9a-z]{26}$/);
    assert.equal(job.state, 'JOB_STATE_QUEUED');

    const events = await collect(client.watch(job));
    assert.equal(events[0].type, 'EVENT_TYPE_JOB_CREATED');
    assert.equal(events.at(-1).type, 'EVENT_TYPE_JOB_SUCCEEDED');
    assert.ok(events.every((event) => event.job === job.name));
    const positions = events.map((event) => eventPosition(event.id));
    for (let i = 1; i < positions.length; i += 1) {
      const [a, b] = [positions[i - 1], positions[i]];
      assert.ok(a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]), `events out of order: ${events.map((e) => e.id)}`);
    }

    const done = await client.result(job);
    assert.equal(done.state, 'JOB_STATE_SUCCEEDED');
    assert.ok(done.result.output.length > 0);
    assert.equal(events.at(-1).payload, 'jobSucceeded');
    assert.equal(events.at(-1).jobSucceeded.output, done.result.output);
    assert.equal(done.lastEventId, events.filter(isHistory).at(-1).id);

    const { jobs } = await client.listJobs({ pageSize: 50 });
    assert.ok(jobs.some((listed) => listed.name === job.name));
  });

  it('streams a job it starts with executeStream, once per request id', async () => {
    const requestId = `node-${Date.now()}`;
    const events = await collect(client.executeStream({ prompt: 'Count to three', model: 'local' }, { requestId }));
    assert.equal(events[0].type, 'EVENT_TYPE_JOB_CREATED');
    assert.equal(events.at(-1).type, 'EVENT_TYPE_JOB_SUCCEEDED');
    const again = await client.execute({ prompt: 'Count to three', model: 'local' }, { requestId });
    assert.equal(again.name, events[0].job);
  });

  it('resumes a watch after the last event id seen', async () => {
    const job = await client.result(await client.execute({ prompt: 'Tell a short story', model: 'local' }));
    const history = (await collect(client.watch(job))).filter(isHistory);
    assert.ok(history.length >= 4, `too short a history: ${history.map((e) => e.type)}`);
    for (const k of [0, 1, history.length - 2]) {
      const resumed = (await collect(client.watch(job.name, { afterEventId: history[k].id }))).filter(isHistory);
      assert.deepEqual(resumed.map((e) => e.id), history.slice(k + 1).map((e) => e.id));
    }
  });

  it('resumes a broken stream after a gateway restart, losing and repeating nothing', {
    skip: process.env.AGENTRT_TEST_CONTROL_DIR ? false : 'AGENTRT_TEST_CONTROL_DIR is not set',
  }, async () => {
    const control = process.env.AGENTRT_TEST_CONTROL_DIR;
    const resilient = new RuntimeClient(ENDPOINT, API_KEY, { retry: { attempts: 20, initialBackoffMs: 100, maxBackoffMs: 1000 } });
    try {
      const job = await resilient.execute({ prompt: 'tell me a long story', model: 'local-slow' });
      const seen = [];
      let asked = false;
      for await (const event of resilient.watch(job)) {
        seen.push(event);
        if (!asked && event.type === 'EVENT_TYPE_OUTPUT_DELTA') {
          asked = true; // the job is running: have the gateway killed and started again
          fs.writeFileSync(path.join(control, 'restart-gateway'), job.name);
        }
      }
      assert.ok(fs.existsSync(path.join(control, 'gateway-restarted')), 'the gateway was not restarted');
      const ids = seen.map((e) => e.id);
      assert.equal(new Set(ids).size, ids.length, 'an event was yielded twice');
      const history = seen.filter(isHistory).map((e) => eventPosition(e.id)[0]);
      assert.deepEqual(history, history.map((_, i) => i + 1), 'a history event was lost');
      assert.equal(seen.at(-1).type, 'EVENT_TYPE_JOB_SUCCEEDED');
    } finally {
      resilient.close();
    }
  });

  it('cancels a running job', async () => {
    const job = await client.execute({ prompt: 'tell me a long story', model: 'local-slow' });
    const types = [];
    for await (const event of client.watch(job)) {
      types.push(event.type);
      if (event.type === 'EVENT_TYPE_OUTPUT_DELTA' && types.filter((t) => t === event.type).length === 1) {
        const cancelled = await client.cancel(job, 'the user closed the tab');
        assert.ok(['JOB_STATE_CANCELLED', 'JOB_STATE_RUNNING'].includes(cancelled.state), cancelled.state);
      }
    }
    assert.equal(types.at(-1), 'EVENT_TYPE_JOB_CANCELLED');
    const done = await client.result(job);
    assert.equal(done.state, 'JOB_STATE_CANCELLED');

    const error = await rejection(client.cancel(job));
    assert.ok(error instanceof AgentrtError);
    assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(error.reason, 'ILLEGAL_TRANSITION');
  });

  it('resolves an approval from Node.js', {
    skip: process.env.AGENTRT_TEST_APPROVAL_POLICY ? false : 'AGENTRT_TEST_APPROVAL_POLICY is not set',
  }, async () => {
    const job = await client.execute({
      prompt: 'call calculator {"expression": "6 * 7"}',
      model: 'local',
      tools: [{ name: 'calculator' }],
      policy: { name: process.env.AGENTRT_TEST_APPROVAL_POLICY },
    });
    let waiting = null;
    for await (const event of client.watch(job)) {
      if (event.type === 'EVENT_TYPE_JOB_WAITING') {
        waiting = event;
        break;
      }
    }
    assert.ok(waiting, 'the job never waited for its approval');
    const { actions } = await client.listActions(job, { states: ['STATE_PENDING'] });
    assert.equal(actions.length, 1);
    const [action] = actions;
    assert.equal(action.kind, 'ACTION_KIND_APPROVAL');
    assert.equal(fromStruct(action.payload).tool, 'calculator');

    const resolved = await client.resolveAction(action.name, { approved: true }, { requestId: `approve-${job.name}` });
    assert.equal(resolved.state, 'STATE_RESOLVED');
    assert.deepEqual(fromStruct(resolved.outcome), { approved: true });
    const done = await client.result(job);
    assert.equal(done.state, 'JOB_STATE_SUCCEEDED', JSON.stringify(done.failure));
    assert.match(done.result.output, /42/);

    const again = await rejection(client.resolveAction(action.name, { approved: false }));
    assert.equal(again.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(again.reason, 'ACTION_NOT_PENDING');
  });

  it('maps errors to their ErrorInfo reason', async () => {
    const missing = await rejection(client.getJob('jobs/01aaaaaaaaaaaaaaaaaaaaaaaa'));
    assert.ok(missing instanceof AgentrtError);
    assert.equal(missing.code, grpc.status.NOT_FOUND);
    assert.equal(missing.codeName, 'NOT_FOUND');
    assert.equal(missing.reason, 'JOB_NOT_FOUND');

    const empty = await rejection(client.execute({ model: 'local' }));
    assert.equal(empty.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(empty.reason, 'FIELD_REQUIRED');

    const model = await rejection(client.execute({ prompt: 'hi', model: 'no-such-model' }));
    assert.equal(model.code, grpc.status.NOT_FOUND);
    assert.equal(model.reason, 'MODEL_NOT_FOUND');

    const stranger = new RuntimeClient(ENDPOINT, 'agk_not-a-real-key');
    try {
      const denied = await rejection(stranger.listJobs());
      assert.equal(denied.code, grpc.status.UNAUTHENTICATED);
      assert.equal(denied.reason, 'API_KEY_INVALID');
      const watched = await rejection(collect(stranger.watch('jobs/01aaaaaaaaaaaaaaaaaaaaaaaa')));
      assert.equal(watched.code, grpc.status.UNAUTHENTICATED);
      assert.equal(watched.reason, 'API_KEY_INVALID');
    } finally {
      stranger.close();
    }
  });
});
