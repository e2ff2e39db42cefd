'use strict';
// Entry of the executor's inference thread (see worker-engine.ts). Worker threads get neither
// jest's transform nor, with execArgv [], the parent's --require hooks: register tsx's
// CommonJS loader here, then load the TypeScript entry. Plain JavaScript on purpose.
require('tsx/cjs');
require('./engine-thread.ts');
