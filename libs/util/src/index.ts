/** @tandem/util: small dependency-free helpers every project may import (no IO, nothing of ours). */
export { groupBy } from './group';
export { Rng, seededRandom } from './random';
export { settledWithin, sleep } from './sleep';
export { median, quantile } from './stats';
