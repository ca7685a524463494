'use strict';
// What the contract tests in test/ share; kept outside test/, whose every file Node's
// test runner runs as tests.

const assert = require('node:assert/strict');

// The error a call that must fail rejects with.
async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  return assert.fail('the call succeeded');
}

module.exports = { rejection };
