#!/usr/bin/env node
'use strict';
// Runs the TypeScript CLI through tsx's CommonJS loader, so `npx tandem` works right
// after `npm ci` with no build step.
require('tsx/cjs');
require('../src/main.ts').main(process.argv.slice(2));
