// Preloaded (node --require tsx/cjs --require this) to run an example as a user would, `require('tera-peft')`
// included, against this checkout's TypeScript sources rather than a build of them.
const Module = require('node:module');
const path = require('node:path');

const entry = path.join(__dirname, '..', '..', 'lib', 'index.ts');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return resolve.call(this, request === 'tera-peft' ? entry : request, ...rest);
};
