// Type declarations of the agentrt Node.js client (client/index.js). Messages are the plain
// objects @grpc/proto-loader makes of the contracts in protos/: camelCase fields, enums as
// their names, 64-bit integers as strings, a oneof's chosen field named by its oneof
// (RuntimeEvent.payload). Every field of a response is present (defaults filled in).

import type { ChannelCredentials, ChannelOptions } from '@grpc/grpc-js';

/** Integers of 64 bits arrive as decimal strings; a number is accepted in requests. */
export type Int64 = string;
export interface Timestamp { seconds: Int64; nanos: number }
export interface Duration { seconds: Int64 | number; nanos?: number }
/** google.protobuf.Struct as proto-loader represents it; see fromStruct / toStruct. */
export interface Struct { fields: { [key: string]: Value } }
export type Value =
  | { kind?: 'nullValue'; nullValue: 'NULL_VALUE' }
  | { kind?: 'numberValue'; numberValue: number }
  | { kind?: 'stringValue'; stringValue: string }
  | { kind?: 'boolValue'; boolValue: boolean }
  | { kind?: 'structValue'; structValue: Struct }
  | { kind?: 'listValue'; listValue: { values: Value[] } };
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type JobState =
  | 'JOB_STATE_UNSPECIFIED' | 'JOB_STATE_QUEUED' | 'JOB_STATE_RUNNING' | 'JOB_STATE_WAITING'
  | 'JOB_STATE_SUCCEEDED' | 'JOB_STATE_FAILED' | 'JOB_STATE_CANCELLED' | 'JOB_STATE_TIMED_OUT';
/** An agentrt.common.v1.EventType name, e.g. 'EVENT_TYPE_JOB_SUCCEEDED'. */
export type EventType = `EVENT_TYPE_${string}`;
export type ActionState =
  | 'STATE_UNSPECIFIED' | 'STATE_PENDING' | 'STATE_RESOLVED' | 'STATE_EXPIRED' | 'STATE_CANCELLED';
export type ActionKind =
  | 'ACTION_KIND_UNSPECIFIED' | 'ACTION_KIND_APPROVAL' | 'ACTION_KIND_TOOL_CALL' | 'ACTION_KIND_INPUT';
export type Role = `ROLE_${string}`;

export interface ToolCall { id: string; name: string; arguments: string }
export interface Message { role: Role; content?: string; toolCalls?: ToolCall[]; toolCallId?: string; name?: string }
export interface ToolSpec {
  name: string; description?: string; parameters?: Struct; kind?: `TOOL_KIND_${string}`; idempotent?: boolean;
}
export interface ModelParams { temperature?: number; maxOutputTokens?: Int64 | number; stop?: string[] }
export interface BudgetSpec {
  maxTokens?: Int64 | number; maxCost?: string; maxToolCalls?: Int64 | number; maxTurns?: Int64 | number;
  maxRuntime?: Duration;
}
export interface Usage {
  inputTokens: Int64; outputTokens: Int64; cachedInputTokens: Int64; totalTokens: Int64;
  /** The part of inputTokens written to the provider's prompt cache. */
  cacheWriteInputTokens: Int64;
  /** A decimal amount, e.g. "0.0012". */
  cost: string; modelCalls: Int64; toolCalls: Int64;
}
export interface Failure {
  /** An agentrt.common.v1.ErrorReason name, e.g. 'ERROR_REASON_BUDGET_EXCEEDED'. */
  reason: string; message: string; metadata: { [key: string]: string };
}

/** What to run: a prompt (or messages), a model, tools, budget, policy. */
export interface JobSpec {
  prompt?: string;
  messages?: Message[];
  systemPrompt?: string;
  /** A model the deployment serves; empty: its default model. */
  model?: string;
  params?: ModelParams;
  maxTurns?: Int64 | number;
  tools?: ToolSpec[];
  budget?: BudgetSpec;
  policy?: { name: string };
  timeout?: Duration;
  session?: string;
  labels?: { [key: string]: string };
  [field: string]: unknown;
}

export interface Job {
  /** "jobs/{job}". */
  name: string;
  tenant: string;
  principal: string;
  spec: JobSpec;
  state: JobState;
  requestId: string;
  result: { output: string; messages: Message[] } | null;
  failure: Failure | null;
  usage: Usage | null;
  attempt: Int64;
  turns: Int64;
  createTime: Timestamp | null;
  updateTime: Timestamp | null;
  startTime: Timestamp | null;
  endTime: Timestamp | null;
  deadline: Timestamp | null;
  /** Pass to watch({ afterEventId }) to follow the job from here. */
  lastEventId: string;
  traceId: string;
  root: string;
  depth: Int64;
}

export interface RuntimeEvent {
  /** "<job id>.<sequence>" (history) or "<job id>.<sequence>.<n>" (transient). */
  id: string;
  type: EventType;
  sequence: Int64;
  time: Timestamp | null;
  tenant: string;
  job: string;
  parentJob: string;
  traceId: string;
  jobState: JobState;
  rootJob: string;
  node: string;
  /** Which payload field is set, e.g. 'outputDelta' or 'jobSucceeded'. */
  payload?: 'outputDelta' | 'turnCompleted' | 'jobSucceeded' | 'failure' | 'attempt' | 'action'
    | 'toolCalled' | 'usage' | 'child' | string;
  outputDelta?: { turn: Int64; text: string } | null;
  turnCompleted?: { turn: Int64; message: Message | null; usage: Usage | null; model: string } | null;
  jobSucceeded?: { output: string; usage: Usage | null } | null;
  failure?: Failure | null;
  attempt?: { attempt: Int64; worker: string; reason: string; runtimeVersion: string } | null;
  action?: { action: string; kind: string; outcome: Struct | null } | null;
  toolCalled?: { call: ToolCall | null; ok: boolean; output: string; duration: Duration | null } | null;
  usage?: Usage | null;
  child?: { child: string; node: string; state: JobState; failure: Failure | null } | null;
}

export interface Action {
  /** "jobs/{job}/actions/{action}". */
  name: string;
  kind: ActionKind;
  state: ActionState;
  /** What the action is about, e.g. { tool, arguments } for an approval; see fromStruct. */
  payload: Struct | null;
  expireTime: Timestamp | null;
  timeoutOutcome: Struct | null;
  outcome: Struct | null;
  resumeToken: string;
  createTime: Timestamp | null;
  resolveTime: Timestamp | null;
  resolvedBy: string;
}

export interface ListJobsOptions {
  pageSize?: number;
  pageToken?: string;
  states?: JobState[];
  session?: string;
  createTimeAfter?: Timestamp;
  createTimeBefore?: Timestamp;
  parent?: string;
  root?: string;
}
export interface ListActionsOptions { states?: ActionState[]; pageSize?: number; pageToken?: string }

export interface ClientOptions {
  /** Default: insecure (plain text). grpc.credentials.createSsl() for TLS. */
  credentials?: ChannelCredentials;
  channelOptions?: ChannelOptions;
  /** Deadline of each call except the event streams, its retries included, in ms (default 30000; 0: none). */
  callTimeoutMs?: number;
  /** How a call whose outcome is unknown (UNAVAILABLE, an unrequested CANCELLED, DEADLINE_EXCEEDED
   * with time left) is tried again, and an event stream broken by UNAVAILABLE or CANCELLED reopened. */
  retry?: RetryPolicy;
}

/** attempts: tries of a call in all (1: no retries), or openings of a stream in a row that bring no
 * event; the pause before try n is about initialBackoffMs * 2^(n-2), at most maxBackoffMs, jittered. */
export interface RetryPolicy { attempts?: number; initialBackoffMs?: number; maxBackoffMs?: number }

/** A failed call. */
export class AgentrtError extends Error {
  constructor(code: number, reason: string, message: string, metadata?: { [key: string]: string });
  /** The gRPC status code (grpc.status). */
  readonly code: number;
  /** Its name, e.g. 'NOT_FOUND'. */
  readonly codeName: string;
  /** The ErrorInfo reason, e.g. 'JOB_NOT_FOUND'; empty when the server sent none. */
  readonly reason: string;
  /** The server's message. */
  readonly details: string;
  /** The ErrorInfo metadata, e.g. { field: 'spec.model' }. */
  readonly metadata: { [key: string]: string };
}

/** A client of an agentrt gateway (or of the edge in front of it). */
export class RuntimeClient {
  /** `endpoint` is "host:port"; `apiKey` is sent as "authorization: Bearer <key>". */
  constructor(endpoint: string, apiKey: string, options?: ClientOptions);
  /** Starts a job and returns it at once, QUEUED (the same job again for a known requestId; one is
   * made up when none is given, so that a retried call starts one job). */
  execute(spec: JobSpec, options?: { requestId?: string }): Promise<Job>;
  /** Starts a job and yields its events until the terminal one, resuming a broken stream. */
  executeStream(spec: JobSpec, options?: { requestId?: string }): AsyncIterable<RuntimeEvent>;
  /** Yields a job's events after afterEventId (from the start when empty) until it ends. */
  watch(job: string | Job, options?: { afterEventId?: string }): AsyncIterable<RuntimeEvent>;
  /** Waits for the job to finish and returns it. */
  result(job: string | Job): Promise<Job>;
  getJob(job: string | Job): Promise<Job>;
  /** The tenant's jobs, newest first. */
  listJobs(options?: ListJobsOptions): Promise<{ jobs: Job[]; nextPageToken: string }>;
  /** Cancels a job that has not finished (FAILED_PRECONDITION once it has; a retry that finds it
   * CANCELLED returns it). */
  cancel(job: string | Job, reason?: string): Promise<Job>;
  /** A job's actions, oldest first. */
  listActions(job: string | Job, options?: ListActionsOptions): Promise<{ actions: Action[]; nextPageToken: string }>;
  /** Resolves a pending action by its name or resume token, e.g. with { approved: true }. */
  resolveAction(target: string, outcome: { [key: string]: Json }, options?: { requestId?: string }): Promise<Action>;
  /** Closes the channel. */
  close(): void;
}

export const DEFAULT_RETRY: Readonly<Required<RetryPolicy>>;
export const TERMINAL_STATES: readonly JobState[];
export const TERMINAL_EVENTS: readonly EventType[];
/** Decodes a failed grpc-js call's status details into an AgentrtError. */
export function errorFromStatus(error: unknown): AgentrtError | unknown;
/** [sequence, n] of an event id (n = -1 for a history event), null for another form. */
export function eventPosition(eventId: string): [number, number] | null;
/** "jobs/{id}" of a job, its name or its id. */
export function jobName(job: string | Job): string;
export function fromStruct(struct: Struct | null | undefined): { [key: string]: Json };
export function toStruct(object: { [key: string]: Json }): Struct;
