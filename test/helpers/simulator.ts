export {
  startSimulator,
  type RecordedRequest,
  type SimBehaviour,
  type SimOptions,
  type Simulator,
} from '../../src/sim/index.js';
