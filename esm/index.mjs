// ESM entry, copied to dist/ by `npm run build:ts`: re-exports the CommonJS build,
// so `import tera from 'tera-peft'` and `import { tensor } from 'tera-peft'` share one module and one addon.
export * from './index.js';
export { default } from './index.js';
