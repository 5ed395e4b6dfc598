// Types of the ESM entry (copied to dist/ beside index.mjs): the CommonJS API, also as the default export.
import * as tera from './index.js';
export * from './index.js';
export default tera;
