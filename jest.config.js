// Shared jest configuration: swc transpiles TypeScript (type checking is `npm run typecheck`),
// and a node environment that shares the host realm's typed arrays, which onnxruntime-node needs.
const path = require('node:path');
module.exports = {
  testEnvironment: path.join(__dirname, 'tools/jest/ort-env.js'),
  transform: { '^.+\\.ts$': ['@swc/jest', { jsc: { parser: { syntax: 'typescript' }, target: 'es2022' }, module: { type: 'commonjs' } }] },
  moduleNameMapper: {
    '^@tandem/(protocol|dp|model|testkit|service-kit|util|plot)$': path.join(__dirname, 'libs/$1/src/index.ts'),
    '^@tandem/(server-executor|planner|client-agent)$': path.join(__dirname, 'apps/$1/src/index.ts'),
    '^@tandem/(launcher|demo|loadtest|simulate)$': path.join(__dirname, 'tools/$1/src/index.ts'),
  },
  testMatch: ['**/?(*.)+(spec|test).ts'],
  testPathIgnorePatterns: ['/node_modules/'],
  testTimeout: 60000,
};
