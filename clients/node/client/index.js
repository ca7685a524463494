'use strict';
// A typed client of agentrt's public API, agentrt.gateway.v1.RuntimeService, over
// @grpc/grpc-js: run agents, follow their events (resuming a broken stream where it
// stopped), cancel them, and resolve their actions. A call whose outcome is unknown is
// tried again when a repeat is harmless (docs/contracts.md, "Retrying calls"). Failed
// calls reject with an AgentrtError that carries the reason of the status's
// google.rpc.ErrorInfo.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { includeDirs, fromStruct, toStruct } = require('../lib/protos');

const LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

const TERMINAL_STATES = Object.freeze([
  'JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_TIMED_OUT',
]);
const TERMINAL_EVENTS = Object.freeze([
  'EVENT_TYPE_JOB_SUCCEEDED', 'EVENT_TYPE_JOB_FAILED', 'EVENT_TYPE_JOB_CANCELLED', 'EVENT_TYPE_JOB_TIMED_OUT',
]);

// google.rpc.Status and google.rpc.ErrorInfo, described inline: only these two are decoded.
const RPC_TYPES = protobuf.Root.fromJSON({
  nested: {
    google: { nested: {
      protobuf: { nested: { Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
      rpc: { nested: {
        Status: { fields: {
          code: { type: 'int32', id: 1 },
          message: { type: 'string', id: 2 },
          details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
        } },
        ErrorInfo: { fields: {
          reason: { type: 'string', id: 1 },
          domain: { type: 'string', id: 2 },
          metadata: { keyType: 'string', type: 'string', id: 3 },
        } },
      } },
    } },
  },
});
const STATUS = RPC_TYPES.lookupType('google.rpc.Status');
const ERROR_INFO = RPC_TYPES.lookupType('google.rpc.ErrorInfo');

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

class AgentrtError extends Error {
  // `code` is the gRPC status code (a number; `codeName` its name), `reason` the ErrorInfo
  // reason ("JOB_NOT_FOUND"; empty when the server sent none, e.g. it could not be reached),
  // `metadata` the ErrorInfo's details (e.g. metadata.field for an invalid field).
  constructor(code, reason, message, metadata = {}) {
    const codeName = CODE_NAMES[code] || String(code);
    super(`${[codeName, reason].filter(Boolean).join(' ')}: ${message}`);
    this.name = 'AgentrtError';
    this.code = code;
    this.codeName = codeName;
    this.reason = reason;
    this.details = message;
    this.metadata = metadata;
  }
}

// The AgentrtError of a failed grpc-js call: its ErrorInfo decoded from the status details
// the server put in the trailers.
function errorFromStatus(error) {
  if (error instanceof AgentrtError) return error;
  if (error == null || typeof error.code !== 'number') return error;
  let reason = '';
  let metadata = {};
  const raw = error.metadata && error.metadata.get(STATUS_DETAILS_KEY)[0];
  if (raw) {
    const status = STATUS.decode(Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'base64'));
    const info = status.details.find((any) => any.type_url === ERROR_INFO_TYPE);
    if (info) {
      const decoded = ERROR_INFO.decode(info.value);
      reason = decoded.reason;
      metadata = { ...decoded.metadata };
    }
  }
  return new AgentrtError(error.code, reason, error.details || error.message, metadata);
}

// Where an event id ("<job>.<sequence>" or "<job>.<sequence>.<n>") sits in its job's stream,
// as [sequence, n] (n = -1 for a history event, which comes before its transient ones).
function eventPosition(eventId) {
  const parts = String(eventId).split('.');
  if ((parts.length !== 2 && parts.length !== 3) || !parts.slice(1).every((p) => /^\d+$/.test(p))) return null;
  return [Number(parts[1]), parts.length === 3 ? Number(parts[2]) : -1];
}

function comesAfter(position, seen) {
  return seen == null || position == null || position[0] > seen[0] || (position[0] === seen[0] && position[1] > seen[1]);
}

function jobName(job) {
  const name = typeof job === 'string' ? job.trim() : job && job.name;
  if (!name) throw new TypeError('a job, its name or its id is required');
  return name.startsWith('jobs/') ? name : `jobs/${name}`;
}

function loadRuntimeService() {
  const definition = protoLoader.loadSync('agentrt/gateway/v1/gateway.proto', {
    ...LOADER_OPTIONS,
    includeDirs: includeDirs(),
  });
  return grpc.loadPackageDefinition(definition).agentrt.gateway.v1.RuntimeService;
}

// How a call whose outcome is unknown is tried again: `attempts` tries in all (1: never
// again), for an event stream openings in a row that bring no event; pauses from
// initialBackoffMs, doubled each time up to maxBackoffMs, jittered.
const DEFAULT_RETRY = Object.freeze({ attempts: 8, initialBackoffMs: 200, maxBackoffMs: 5000 });
// The outcome of a call that ends so is unknown. A CANCELLED that reaches a callback is
// not the client's own (it never cancels a unary call but by close()): a server shutting
// down cancels the calls it had not started.
const UNKNOWN_OUTCOME = Object.freeze([grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.DEADLINE_EXCEEDED]);
// What breaks an event stream, which has no deadline, off.
const BROKEN_OFF = Object.freeze([grpc.status.UNAVAILABLE, grpc.status.CANCELLED]);

function backoffMs(policy, failures) {
  const ceiling = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** (failures - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

class RuntimeClient {
  constructor(endpoint, apiKey, options = {}) {
    if (!endpoint || !String(endpoint).trim()) throw new TypeError('an endpoint (host:port) is required');
    if (!apiKey || !String(apiKey).trim()) throw new TypeError('an API key is required');
    const Service = loadRuntimeService();
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this._stub = new Service(String(endpoint).trim(), credentials, options.channelOptions || {});
    this._metadata = new grpc.Metadata();
    this._metadata.set('authorization', `Bearer ${String(apiKey).trim()}`);
    this._callTimeoutMs = options.callTimeoutMs === undefined ? 30000 : options.callTimeoutMs;
    this._retry = { ...DEFAULT_RETRY, ...(options.retry || {}) };
    if (!(this._retry.attempts >= 1)) throw new TypeError('retry.attempts must be at least 1');
    this._closed = false;
  }

  close() {
    this._closed = true;
    this._stub.close();
  }

  // A request id is made up when none is given, so that a retry cannot start a second job.
  execute(spec, options = {}) {
    return this._unary('Execute', { spec, requestId: options.requestId || crypto.randomUUID() });
  }

  // Starts a job and yields its events until the terminal one; a broken stream is resumed
  // with WatchJob after the last event received. A request id is made up when none is given,
  // so that a stream broken before its first event cannot start a second job.
  executeStream(spec, options = {}) {
    const request = { spec, requestId: options.requestId || crypto.randomUUID() };
    return this._follow((last) => (last == null
      ? this._stub.ExecuteStream(request, this._metadata)
      : this._watchCall(last.job, last.id)), '');
  }

  // Yields a job's events after `afterEventId` (from its beginning when empty), then live
  // ones, until the terminal event; resumes a stream broken by UNAVAILABLE after the last
  // event received, and drops events it has already yielded.
  watch(job, options = {}) {
    const name = jobName(job);
    const after = options.afterEventId || '';
    return this._follow((last) => this._watchCall(name, last == null ? after : last.id), after);
  }

  async result(job) {
    let current = await this.getJob(job);
    if (!TERMINAL_STATES.includes(current.state)) {
      // eslint-disable-next-line no-unused-vars
      for await (const _ of this.watch(current.name, { afterEventId: current.lastEventId })) { /* until it ends */ }
      current = await this.getJob(current.name);
    }
    return current;
  }

  getJob(job) {
    return this._unary('GetJob', { name: jobName(job) });
  }

  listJobs(options = {}) {
    return this._unary('ListJobs', options);
  }

  // A retry that finds the job ended returns it when it is CANCELLED: the first try was.
  cancel(job, reason = '') {
    const name = jobName(job);
    return this._unary('CancelJob', { name, reason }, async (error) => {
      if (error.code === grpc.status.FAILED_PRECONDITION) {
        const current = await this.getJob(name);
        if (current.state === 'JOB_STATE_CANCELLED') return current;
      }
      throw error;
    });
  }

  listActions(job, options = {}) {
    return this._unary('ListActions', { ...options, parent: jobName(job) });
  }

  // Resolves a pending action by its name ("jobs/{job}/actions/{action}") or its resume
  // token; `outcome` is plain JSON, e.g. { approved: true }.
  resolveAction(target, outcome, options = {}) {
    const request = { outcome: toStruct(outcome), requestId: options.requestId || crypto.randomUUID() };
    if (target.includes('/')) request.name = target;
    else request.resumeToken = target;
    return this._unary('ResolveAction', request);
  }

  // Every unary call of this client is a read or applied once however often it is sent
  // (a request id, or a cancel), so each is tried again while its outcome is unknown, the
  // tries together within callTimeoutMs. `repeated` reads what a retry answers when the
  // first try was applied.
  async _unary(method, request, repeated = null) {
    const deadline = this._callTimeoutMs ? Date.now() + this._callTimeoutMs : null;
    for (let failures = 1; ; failures += 1) {
      try {
        return await this._send(method, request, deadline);
      } catch (error) {
        if (!UNKNOWN_OUTCOME.includes(error.code)) {
          if (failures > 1 && repeated) return repeated(error);
          throw error;
        }
        const pause = backoffMs(this._retry, failures);
        const inTime = deadline == null || Date.now() + pause < deadline;
        if (failures >= this._retry.attempts || !inTime || this._closed) throw error;
        await sleep(pause);
      }
    }
  }

  _send(method, request, deadline) {
    const options = deadline == null ? {} : { deadline };
    return new Promise((resolve, reject) => {
      this._stub[method](request, this._metadata, options, (error, response) => {
        if (error) reject(errorFromStatus(error));
        else resolve(response);
      });
    });
  }

  _watchCall(name, afterEventId) {
    return this._stub.WatchJob({ name, afterEventId }, this._metadata);
  }

  async *_follow(open, afterEventId) {
    let seen = afterEventId ? eventPosition(afterEventId) : null;
    let last = null;
    let failures = 0;
    for (;;) {
      const call = open(last);
      try {
        for await (const event of call) {
          const position = eventPosition(event.id);
          if (!comesAfter(position, seen)) continue;
          failures = 0;
          last = event;
          seen = position;
          yield event;
          if (TERMINAL_EVENTS.includes(event.type)) return;
        }
        if (failures + 1 >= this._retry.attempts) {
          throw new AgentrtError(grpc.status.UNAVAILABLE, '', 'the event stream ended before the job did');
        }
      } catch (error) {
        if (error instanceof AgentrtError) throw error;
        if (!BROKEN_OFF.includes(error.code) || failures + 1 >= this._retry.attempts || this._closed) {
          throw errorFromStatus(error);
        }
      } finally {
        call.cancel();
      }
      failures += 1;
      await sleep(backoffMs(this._retry, failures));
    }
  }
}

module.exports = {
  AgentrtError,
  DEFAULT_RETRY,
  RuntimeClient,
  TERMINAL_EVENTS,
  TERMINAL_STATES,
  errorFromStatus,
  eventPosition,
  fromStruct,
  jobName,
  toStruct,
};
