'use strict';
// The tools this example plugin serves: plain functions of their arguments, with the JSON
// Schemas the orchestrator validates arguments against before calling.

const MAX_TEXT = 100000;

class ToolError extends Error {}

const slugify = {
  spec: {
    name: 'slugify',
    description:
      'Turns text into a URL slug: lowercase ASCII letters and digits joined by a ' +
      'separator, accents removed (e.g. "Crème Brûlée!" -> "creme-brulee").',
    idempotent: true,
    parameters: {
      type: 'object',
      properties: {
        text: { type: 'string', description: 'The text to turn into a slug.', maxLength: MAX_TEXT },
        separator: {
          type: 'string',
          description: 'What joins the words; "-" unless given.',
          enum: ['-', '_', '.'],
        },
        max_length: {
          type: 'integer',
          description: 'Cut the slug at a word boundary to at most this many characters.',
          minimum: 1,
          maximum: 200,
        },
      },
      required: ['text'],
      additionalProperties: false,
    },
  },
  run({ text, separator = '-', max_length: maxLength }) {
    const words = text
      .normalize('NFKD')
      .replace(/[\u0300-\u036f]/g, '')
      .toLowerCase()
      .split(/[^a-z0-9]+/)
      .filter(Boolean);
    if (words.length === 0) {
      throw new ToolError(`"${text.slice(0, 80)}" has no letters or digits to make a slug of`);
    }
    let slug = words.join(separator);
    if (maxLength !== undefined && slug.length > maxLength) {
      const cut = slug.slice(0, maxLength + 1);
      const boundary = cut.lastIndexOf(separator);
      slug = boundary > 0 ? cut.slice(0, boundary) : slug.slice(0, maxLength);
    }
    return { text: slug };
  },
};

const wordFrequency = {
  spec: {
    name: 'word_frequency',
    description:
      'Counts how often each word occurs in a text (case-insensitive) and returns the most ' +
      'frequent ones with their counts, most frequent first.',
    idempotent: true,
    parameters: {
      type: 'object',
      properties: {
        text: { type: 'string', description: 'The text to count words in.', maxLength: MAX_TEXT },
        top: {
          type: 'integer',
          description: 'How many words to return; 10 unless given.',
          minimum: 1,
          maximum: 100,
        },
        min_length: {
          type: 'integer',
          description: 'Ignore words shorter than this; 1 unless given.',
          minimum: 1,
          maximum: 50,
        },
      },
      required: ['text'],
      additionalProperties: false,
    },
  },
  run({ text, top = 10, min_length: minLength = 1 }) {
    const counts = new Map();
    let total = 0;
    for (const word of text.toLowerCase().match(/[\p{L}\p{N}']+/gu) || []) {
      total += 1;
      if (word.length >= minLength) counts.set(word, (counts.get(word) || 0) + 1);
    }
    const words = [...counts.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .slice(0, top)
      .map(([word, count]) => ({ word, count }));
    return { structured: { total_words: total, distinct_words: counts.size, words } };
  },
};

const TOOLS = new Map([slugify, wordFrequency].map((tool) => [tool.spec.name, tool]));

module.exports = { TOOLS, ToolError };
